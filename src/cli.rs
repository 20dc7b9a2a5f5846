//! The `vivachat` command line: the arguments (clap) and which module runs
//! each command. Defaults are the constants the server and core use.

use std::io::IsTerminal;

use clap::{Args, Parser, Subcommand};

use crate::names::Name;

#[derive(Debug, Parser)]
#[command(
    name = "vivachat",
    version,
    about = "A real-time chat server whose data structures explain themselves",
    long_about = "A real-time WebSocket chat server. Every operation on its five in-memory \
                  structures (active_connections, presence, offline_messages, group_members, \
                  blocked_users) is counted and narrated with its Big-O cost."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the WebSocket chat server, narrating each structure operation.
    Serve(Box<crate::serve::ServeArgs>),
    /// Show every structure of a running server as tables, with operation counts.
    Inspect(InspectArgs),
    /// Chat from this terminal (or from a script, when stdin is not a terminal).
    #[command(after_help = crate::client::help_text())]
    Client(ClientArgs),
    /// Prove each Big-O claim with counted operations and timings; load-test the server.
    Bench(BenchArgs),
    /// Step through a recording (serve --record) or a scenario, forwards and
    /// backwards, on the board (lecture mode) or in this terminal.
    #[command(after_help = crate::lecture::REPLAY_HELP)]
    Replay(crate::lecture::ReplayArgs),
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: Option<BenchCommand>,
    #[command(flatten)]
    pub structures: StructuresArgs,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Each structure the seed chose against the naive one (the default).
    Structures(StructuresArgs),
    /// Routing through the in-memory core alone, without sockets.
    Core(CoreArgs),
    /// A real server under load over real WebSockets.
    Load(LoadArgs),
}

#[derive(Debug, Clone, Args)]
pub struct StructuresArgs {
    /// Sizes N to measure, e.g. 100,1000,10000,100000 (1e5 works too).
    #[arg(long, value_parser = |s: &str| crate::bench::parse_sizes(s).map(Sizes))]
    pub sizes: Option<Sizes>,
    /// A shorter run for the classroom: N up to 10,000, fewer repetitions (under 3 s).
    #[arg(long)]
    pub quick: bool,
    /// Print the results as JSON: sizes, repetitions, and per comparison its workload,
    /// title, claim, verdict, summary, confirmed, crossover and variants (name,
    /// chosen, class, time_slope, count_slope, and per N: n, ops, counts
    /// {hashes, comparisons, moves}, ns_median, ns_min, ns_max); with --python,
    /// python: the same rows measured in CPython.
    #[arg(long)]
    pub json: bool,
    /// Write a chart to this SVG file: per claim, time and counted steps per
    /// operation against N (log-log), with dashed O(1) and O(n) slopes. With
    /// --only, one claim: a landscape chart (1600x550) for one slide.
    #[arg(long, value_name = "FILE.svg", value_parser = parse_svg_path)]
    pub plot: Option<std::path::PathBuf>,
    /// Measure one claim only.
    #[arg(long, value_enum)]
    pub only: Option<crate::bench::Only>,
    /// Also measure the seed's claims in CPython (deque.popleft against
    /// list.pop(0), x in set / dict / list, ...), beside the Rust rows. Needs python3.
    #[arg(long)]
    pub python: bool,
}

/// A list of sizes (one argument, comma-separated).
#[derive(Debug, Clone)]
pub struct Sizes(pub Vec<usize>);

#[derive(Debug, Args)]
pub struct CoreArgs {
    /// Online users the messages are routed between.
    #[arg(long, default_value_t = 1000)]
    pub users: usize,
    /// Messages to route.
    #[arg(long, default_value_t = 2_000_000)]
    pub messages: usize,
    /// Print the result as JSON: users, messages, seconds, messages_per_second,
    /// ns_per_message, ops_per_message.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LoadArgs {
    /// A running server; without it, `vivachat serve` is started on a free port.
    #[arg(long)]
    pub url: Option<String>,
    /// Connected users, paired for direct messages.
    #[arg(long, default_value_t = 100)]
    pub clients: usize,
    /// Total messages per second, open loop (latency from each message's intended send time).
    #[arg(long, default_value_t = 5000.0)]
    pub rate: f64,
    /// Closed loop instead: each sender keeps W messages in flight.
    #[arg(long, value_name = "W")]
    pub window: Option<usize>,
    /// How long to send, in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub secs: f64,
    /// Group fan-out: clients form groups of K and post group messages.
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u64).range(2..))]
    pub group_size: Option<u64>,
    /// Memory mode: open N idle connections and report memory per connection.
    #[arg(long, value_name = "N")]
    pub conns: Option<usize>,
    /// Memory mode: one user per connection (each arrival is then broadcast to all).
    #[arg(long, requires = "conns")]
    pub distinct: bool,
    /// Memory mode: the connections ask for batched presence (v1.2,
    /// `?presence=batched`): one diff per tick instead of a frame per arrival.
    #[arg(long, requires = "conns")]
    pub batched: bool,
    /// Memory mode: also queue this many messages, then time how long a snapshot holds the core.
    #[arg(long, requires = "conns", default_value_t = 0)]
    pub queued: usize,
    /// Send to users who never connect: every message is queued, and the
    /// latency measured is until its `queued` ack (after the disk write with --data).
    #[arg(long, conflicts_with_all = ["group_size", "conns"])]
    pub offline: bool,
    /// Start the server in durable mode on this SQLite file (`serve --data PATH`).
    #[arg(long, value_name = "PATH", conflicts_with = "url")]
    pub data: Option<std::path::PathBuf>,
    /// Threads the generator runs on (default: one per core). To compare with
    /// another load generator, pin each to its own core (`taskset -c 1`).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=256))]
    pub threads: Option<u64>,
    /// Clients resume (protocol v1.1): they connect with ?resume=0 and confirm
    /// with `received` every 64 messages or 100 ms, as the client and the page
    /// do, so the server holds every message until it is confirmed. Compare
    /// with the same run without it: the cost of holding and releasing.
    #[arg(long, conflicts_with_all = ["conns", "offline"])]
    pub resume: bool,
    /// Print the report as JSON: mode, clients, threads, seconds, offered, sent,
    /// expected, delivered, lost, duplicates, out_of_order, achieved_rate,
    /// send_rate, latency_us and service_latency_us (p50, p90, p99, p999, max),
    /// server_cpu_seconds, server_rss_kib_before/after; in memory mode
    /// idle_connections, kib_per_connection, presence_frames, presence_settled_ms, storm_ms,
    /// presence_ticks (with --batched), server_peak_rss_kib;
    /// with --resume, resume and confirmations (the `received` frames sent).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ClientArgs {
    /// Your name: 1-32 characters of letters, digits, '_', '.', '-'.
    #[arg(value_parser = parse_name)]
    pub name: Name,
    /// The server: ws://HOST:PORT, or wss://HOST for a tunnel (http(s):// works too).
    #[arg(long, default_value = "ws://127.0.0.1:8000")]
    pub url: String,
    /// Print every frame received as its raw JSON line.
    #[arg(long)]
    pub json: bool,
    /// Colours: auto (on a terminal), always, never.
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,
    /// With input from a pipe: after it ends, keep printing what arrives for SECS seconds.
    #[arg(long, value_name = "SECS")]
    pub linger: Option<f64>,
    /// Send one message (TARGET is bob or '#g1'), print its ack, and exit.
    #[arg(long, num_args = 2, value_names = ["TARGET", "TEXT"])]
    pub send: Option<Vec<String>>,
    /// The token of your name on this server, for a second device. Without it the
    /// client uses (and on first use creates) the one saved in your config directory.
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
    /// Print the token saved for NAME on this server (to pass with --token on
    /// another device), and exit without connecting.
    #[arg(long, conflicts_with_all = ["token", "send"])]
    pub show_token: bool,
    /// Do not resume (protocol v1): messages count as received once written
    /// to the connection, and one lost in a crash is not sent again. By
    /// default the client resumes from the last message it showed, and the
    /// server holds each message until the client confirms it.
    #[arg(long)]
    pub no_resume: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The server: http://HOST:PORT (ws:// and a bare HOST[:PORT] work too).
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub url: String,
    /// Redraw continuously, highlighting what changed since the last frame.
    #[arg(long)]
    pub watch: bool,
    /// Time between frames with --watch, e.g. 500ms or 2s.
    #[arg(long, default_value = "500ms", value_parser = crate::inspect::parse_interval, requires = "watch")]
    pub interval: std::time::Duration,
    /// Print the raw snapshot as JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Token for a server started with --admin-token (sent as a Bearer header).
    #[arg(long, value_name = "TOKEN")]
    pub admin_token: Option<String>,
    #[command(flatten)]
    pub view: crate::inspect::ViewArgs,
    /// Rows per table before "... and N more".
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    pub rows: u64,
}

/// `--plot` writes SVG, so a name that promises another format is refused
/// rather than filled with SVG.
fn parse_svg_path(raw: &str) -> Result<std::path::PathBuf, String> {
    let path = std::path::PathBuf::from(raw);
    match path.extension().and_then(|e| e.to_str()) {
        Some(ext) if ext.eq_ignore_ascii_case("svg") => Ok(path),
        _ => Err(format!(
            "--plot writes an SVG chart, so the file name must end in .svg (e.g. chart.svg), not {raw:?}. \
             A browser shows and prints it; for a PNG, convert it (e.g. rsvg-convert chart.svg -o chart.png)"
        )),
    }
}

pub(crate) fn parse_name(raw: &str) -> Result<Name, String> {
    Name::parse(raw.trim_start_matches('#')).map_err(|e| e.to_string())
}

/// Runs the command line; the caller turns an error into a message and exit code 1.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            let color = color_stdout();
            colored::control::set_override(color);
            crate::serve::run(*args, color)
        }
        Command::Inspect(args) => inspect(args),
        Command::Client(args) => client(args),
        Command::Bench(args) => bench(args),
        Command::Replay(args) => {
            let color = color_stdout();
            colored::control::set_override(color);
            crate::lecture::run(args, color)
        }
    }
}

fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let color = color_stdout();
    colored::control::set_override(color);
    match args
        .command
        .unwrap_or(BenchCommand::Structures(args.structures))
    {
        BenchCommand::Structures(a) => {
            let options = crate::bench::StructuresOptions {
                sizes: a.sizes.map(|s| s.0),
                quick: a.quick,
                json: a.json,
                plot: a.plot.clone(),
                color,
                python: a.python,
                only: a.only,
            };
            let report = crate::bench::run_structures(&options)?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                // The paragraphs wrap at spaces to the terminal (the tables fit 100 columns).
                let text = crate::bench::render_structures(&report, color);
                println!(
                    "{}",
                    crate::terminal::wrap_lines(&text, crate::terminal::output_width())
                );
                if let Some(python) = &report.python {
                    println!(
                        "{}",
                        crate::bench::python::render(python, &report.comparisons, color)
                    );
                }
                if let Some(path) = a.plot {
                    println!("chart written to {}", path.display());
                }
            }
        }
        BenchCommand::Core(a) => {
            let r = crate::bench::core::run(a.users, a.messages);
            if a.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "routed {} direct messages between {} online users through the core in {:.2} s:\n  \
                     {:.0} messages per second, {:.0} ns per message\n  \
                     (the routing decisions alone, on one core: no lock, no serialising, \
                     no outbox, no socket; `bench load` reports the locked section as the \
                     server runs it, \"core held\")",
                    r.messages, r.users, r.seconds, r.messages_per_second, r.ns_per_message
                );
                println!("  structure operations per message:");
                for (op, n) in &r.ops_per_message {
                    println!("    {op}: {n}");
                }
            }
        }
        BenchCommand::Load(a) => {
            let options = crate::bench::load::LoadOptions {
                url: a.url,
                clients: a.clients,
                rate: a.window.is_none().then_some(a.rate),
                window: a.window,
                secs: a.secs,
                group_size: a.group_size.map(|k| k as usize),
                conns: a.conns,
                distinct: a.distinct,
                batched: a.batched,
                queued: a.queued,
                offline: a.offline,
                data: a.data,
                threads: a.threads.map_or_else(
                    || std::thread::available_parallelism().map_or(2, |n| n.get()),
                    |n| n as usize,
                ),
                resume: a.resume,
            };
            // The generator holds one socket per client too.
            let _ = crate::server::limits::raise_fd_limit();
            let bar = indicatif::ProgressBar::new(1000);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(options.threads)
                .enable_all()
                .build()?;
            let report = runtime.block_on(crate::bench::load::run(&options, &|f| {
                bar.set_position((f.clamp(0.0, 1.0) * 1000.0) as u64)
            }))?;
            bar.finish_and_clear();
            if a.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("{}", crate::bench::load::render(&report));
            }
            runtime.shutdown_background();
        }
    }
    Ok(())
}

fn client(args: ClientArgs) -> anyhow::Result<()> {
    let color = match args.color {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => color_stdout(),
    };
    colored::control::set_override(color);
    let linger = match args.linger {
        Some(secs) if secs.is_finite() && secs >= 0.0 => {
            Some(std::time::Duration::from_secs_f64(secs))
        }
        Some(secs) => anyhow::bail!("--linger takes a number of seconds, not {secs}"),
        None => None,
    };
    let url = crate::client::base_url(&args.url)?;
    if args.show_token {
        println!("{}", crate::client::token::show(&url, &args.name)?);
        return Ok(());
    }
    let resolved = crate::client::token::resolve(&url, &args.name, args.token.as_deref())?;
    let options = crate::client::ClientOptions {
        name: args.name,
        url,
        json: args.json,
        color,
        linger,
        token: Some(resolved.token),
        fresh_token: resolved.fresh,
        resume: !args.no_resume,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = runtime.block_on(async move {
        match &args.send {
            Some(send) => crate::client::send_once(&options, &send[0], &send[1]).await,
            None => crate::client::run(options).await,
        }
    });
    // Reading stdin blocks a thread that cannot be interrupted: after /quit,
    // do not wait for it (the line editor's thread likewise).
    runtime.shutdown_background();
    result
}

fn inspect(args: InspectArgs) -> anyhow::Result<()> {
    let endpoint = crate::inspect::fetch::Endpoint::parse(&args.url)?;
    let color = color_stdout();
    colored::control::set_override(color);
    crate::inspect::run(crate::inspect::InspectRequest {
        render: crate::inspect::render::RenderOptions {
            width: crate::terminal::output_width(),
            color,
            rows: args.rows as usize,
            view: args.view.view(),
            source: endpoint.url.clone(),
            compact: args.watch,
        },
        endpoint,
        token: args.admin_token,
        watch: args.watch.then_some(args.interval),
        json: args.json,
    })
}

pub fn color_stdout() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}
