//! `vivachat serve`: the front end around [`server::run`]: open the data
//! file, bind, print where to connect, build the [`Config`] from the flags
//! once, run until Ctrl-C or SIGTERM, and print the final operation counts.

use std::net::{IpAddr, SocketAddr};

use anyhow::Context;
use colored::Colorize;

use clap::Args;

use crate::cluster::ClusterConfig;
use crate::core::{
    CoreConfig, MAX_BLOCKED, MAX_GROUPS, MAX_GROUPS_PER_USER, MAX_GROUP_SIZE, MAX_OFFLINE,
};
use crate::event_log::{EventLog, LogRing};
use crate::lecture::record::Recorder;
use crate::server::config::{
    timeout, HANDSHAKE_TIMEOUT_SECS, IDLE_TIMEOUT_SECS, MAX_CONNECTIONS, MAX_CONNECTIONS_PER_IP,
    MAX_CONNECTIONS_PER_USER, MAX_MESSAGE_BYTES, OUTBOX_FRAMES, PRESENCE_TICK,
};
use crate::server::site::{connect_addresses, qr_text, Site};
use crate::server::{self, Config, Dashboard, NetLimits};
use crate::store::{Durable, Store};

/// `println!` wrapped at the terminal's width (or $COLUMNS), so a projector
/// at 80 columns never breaks a word or an address in two.
macro_rules! say {
    ($($arg:tt)*) => {
        crate::terminal::print_wrapped(&format!($($arg)*), crate::terminal::output_width())
    };
}

/// The flags of `vivachat serve`; defaults are the server's and core's constants.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on; 0.0.0.0 lets other machines on the LAN connect.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// TCP port (0 picks a free one and prints it).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Largest accepted WebSocket message, in bytes; larger gets `too_large` and a 1009 close.
    #[arg(long, default_value_t = MAX_MESSAGE_BYTES, value_parser = clap::value_parser!(u64).range(1..=64 * 1024 * 1024))]
    pub max_message_bytes: u64,
    /// Longest offline queue per user; direct messages beyond it get `inbox_full`.
    #[arg(long, default_value_t = MAX_OFFLINE, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_offline: u64,
    /// Frames a connection may have unsent before it is evicted as too slow.
    #[arg(long, default_value_t = OUTBOX_FRAMES, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub outbox_frames: u64,
    /// Lets non-loopback clients read /inspect with 'Authorization: Bearer TOKEN'.
    #[arg(long, value_name = "TOKEN")]
    pub admin_token: Option<String>,
    /// Connections the server holds at most; beyond it upgrades get HTTP 503.
    #[arg(long, default_value_t = MAX_CONNECTIONS, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: u64,
    /// Connections one remote address holds at most (HTTP 429 beyond). A class behind one NAT or tunnel shares an address.
    #[arg(long, default_value_t = MAX_CONNECTIONS_PER_IP, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections_per_ip: u64,
    /// Connections one user (all their devices together) holds at most (HTTP 429 beyond).
    #[arg(long, default_value_t = MAX_CONNECTIONS_PER_USER, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections_per_user: u64,
    /// Longest message text, in characters (`limit_reached` beyond). Off by default: --max-message-bytes bounds it.
    #[arg(long, value_name = "CHARS", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_text_chars: Option<u64>,
    /// Groups the server holds at most; creating one more gets `limit_reached`.
    #[arg(long, default_value_t = MAX_GROUPS, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_groups: u64,
    /// Members one group holds at most.
    #[arg(long, default_value_t = MAX_GROUP_SIZE, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_group_size: u64,
    /// Users one user may block at most.
    #[arg(long, default_value_t = MAX_BLOCKED, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_blocked: u64,
    /// Groups one user may be in at most (so one client cannot take every --max-groups).
    #[arg(long, default_value_t = MAX_GROUPS_PER_USER, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_groups_per_user: u64,
    /// What queued messages and unsent frames may take, in all (e.g. 256MiB, 2GiB).
    /// Past it, queueing is refused (`inbox_full`, saying why) and the fullest
    /// stuck connection is evicted; live chat goes on (a quarter of the
    /// queues' share is kept for messages held for online readers who
    /// resume). Default: a quarter of
    /// this machine's memory, from 256 MiB to 4 GiB (printed at start).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_memory: Option<u64>,
    /// Close a connection (code 4000) that answered no ping for this many seconds; 0 never does.
    #[arg(long, value_name = "SECS", default_value_t = IDLE_TIMEOUT_SECS, value_parser = parse_seconds)]
    pub idle_timeout: f64,
    /// Close a TCP connection that has not become a WebSocket (or finished its HTTP request) this many seconds after it opened; 0 never does.
    #[arg(long, value_name = "SECS", default_value_t = HANDSHAKE_TIMEOUT_SECS, value_parser = parse_seconds)]
    pub handshake_timeout: f64,
    /// Requests per second each connection may send; beyond it they get `rate_limited`. Off by default.
    #[arg(long, value_name = "PER_SEC", value_parser = parse_rate)]
    pub rate_limit: Option<f64>,
    /// Keep offline queues, groups, blocks and name claims in this SQLite file
    /// (created if missing), so a restart or crash loses no acknowledged message.
    #[arg(long, value_name = "PATH")]
    pub data: Option<std::path::PathBuf>,
    /// With --data: keep the data file under this size (e.g. 64MiB, 2GiB). Past it,
    /// what needs the disk is refused with `unavailable` until space is freed.
    #[arg(long, value_name = "SIZE", requires = "data", value_parser = parse_size)]
    pub max_data_size: Option<u64>,
    /// Milliseconds between the presence diffs of connections that ask for
    /// batched presence (`?presence=batched`, v1.2: the page and the client do).
    #[arg(long, value_name = "MS", default_value_t = PRESENCE_TICK.as_millis() as u64, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub presence_tick: u64,
    /// Record every input the core receives to this new file (one JSON line
    /// each), so `vivachat replay FILE` can step through the session.
    #[arg(long, value_name = "FILE")]
    pub record: Option<std::path::PathBuf>,
    /// Run as one node of a cluster: the shared structures (presence, queues,
    /// groups, blocks, name claims) live in this Redis, and every node started
    /// with the same URL serves the same chat (redis://HOST:PORT or redis://HOST:PORT/DB).
    #[arg(long, value_name = "URL", conflicts_with = "data")]
    pub redis: Option<String>,
    /// With --redis: this node's name in the cluster, unique among its nodes
    /// (letters, digits, `.`, `-`, `_`). Default: this server's host and port.
    #[arg(long, value_name = "NAME", requires = "redis", value_parser = parse_node_id)]
    pub node_id: Option<String>,
    /// With --redis: the first part of every key and channel, so one Redis can
    /// hold several clusters (one per class).
    #[arg(long, value_name = "NAME", requires = "redis", default_value = "vivachat", value_parser = parse_node_id)]
    pub redis_prefix: String,
    /// Do not print the event log (start-up lines and final counts are still printed).
    #[arg(long)]
    pub quiet: bool,
    /// Redraw the inspect tables in this terminal on every change, with the
    /// latest event-log lines below them, instead of scrolling the log.
    #[arg(long, conflicts_with = "quiet")]
    pub dashboard: bool,
    /// With --dashboard: which structures and rows it shows.
    #[command(flatten)]
    pub view: crate::inspect::ViewArgs,
    /// The address students open when it is not this machine's own, such as a
    /// tunnel's (https://abc.trycloudflare.com): shown, put in the QR code,
    /// and trusted as an Origin and a Host.
    #[arg(long, value_name = "URL", value_parser = parse_url)]
    pub public_url: Option<String>,
    /// Let pages from this origin (https://site.example) open chat connections;
    /// repeat for more. The server's own pages need no flag.
    #[arg(long = "allow-origin", value_name = "ORIGIN", value_parser = parse_url)]
    pub allow_origins: Vec<String>,
}

impl ServeArgs {
    /// The server's configuration, read from the flags in one place.
    /// `memory` is the budget [`ServeArgs::memory_budget`] chose (read once:
    /// the default comes from /proc/meminfo).
    pub fn config(
        &self,
        durable: Option<Durable>,
        dashboard: Option<Dashboard>,
        memory: u64,
    ) -> Config {
        Config {
            core: CoreConfig {
                max_offline: self.max_offline as usize,
                max_text_chars: self.max_text_chars.map(|n| n as usize),
                max_groups: self.max_groups as usize,
                max_group_size: self.max_group_size as usize,
                max_blocked: self.max_blocked as usize,
                max_groups_per_user: self.max_groups_per_user as usize,
                // `server::run` turns tracing on exactly when it gets an event log.
                ..CoreConfig::default()
            },
            net: NetLimits {
                max_message_bytes: self.max_message_bytes as usize,
                outbox_frames: self.outbox_frames as usize,
                max_connections: self.max_connections as usize,
                max_connections_per_ip: self.max_connections_per_ip as usize,
                max_connections_per_user: self.max_connections_per_user as usize,
                rate_limit: self.rate_limit,
                idle_timeout: timeout(self.idle_timeout),
                handshake_timeout: timeout(self.handshake_timeout),
                ..NetLimits::default()
            },
            admin_token: self.admin_token.clone(),
            dashboard,
            durable,
            public_url: self.public_url.clone(),
            allow_origins: self.allow_origins.clone(),
            presence_tick: std::time::Duration::from_millis(self.presence_tick),
            ..Config::default()
        }
        .with_memory_budget(memory)
    }

    /// `--max-memory`, or the default for this machine, and where it came from.
    pub fn memory_budget(&self) -> (u64, String) {
        const MIB: u64 = 1024 * 1024;
        if let Some(bytes) = self.max_memory {
            return (bytes, "--max-memory".into());
        }
        match server::limits::machine_memory() {
            Some(total) => (
                (total / 4).clamp(256 * MIB, 4096 * MIB),
                format!(
                    "a quarter of this machine's {:.1} GiB, from 256 MiB to 4 GiB; --max-memory sets it",
                    total as f64 / (1024 * MIB) as f64
                ),
            ),
            None => (1024 * MIB, "this machine's memory is unknown; --max-memory sets it".into()),
        }
    }
}

pub fn run(args: ServeArgs, color: bool) -> anyhow::Result<()> {
    if args.view.is_set() && !args.dashboard {
        anyhow::bail!("--only, --user and --group choose what the dashboard shows: add --dashboard (or run `vivachat inspect` with them)");
    }
    // Each connection is a file descriptor: a default limit of 1,024 would cap the class.
    let fd_limit = server::limits::raise_fd_limit();
    // The data file is checked before anything listens: a damaged or newer
    // file is a clear error and exit, never a silent reset.
    let durable = match &args.data {
        Some(path) => {
            let (store, loaded) = Store::open_limited(path, args.max_data_size)?;
            Some(Durable { store, loaded })
        }
        None => None,
    };
    let recorder = match &args.record {
        Some(path) => Some(std::sync::Arc::new(Recorder::create(path)?)),
        None => None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("could not start the async runtime")?;
    runtime.block_on(async move {
        let listener = bind(&args).await?;
        let bound = listener.local_addr()?;
        let signal = crate::terminal::interrupted().context("cannot handle Ctrl-C")?;
        let shutdown = async move {
            signal.await;
            println!("\nShutting down: closing every connection with code 1001 (going away)...");
        };
        // Redis is checked before the banner invites anyone in.
        let cluster = match &args.redis {
            Some(url) => {
                let node = args.node_id.clone().unwrap_or_else(|| {
                    format!("{}-{}", bound.ip(), bound.port()).replace(':', "_")
                });
                let mut cluster = ClusterConfig::new(url, &node);
                cluster.prefix = args.redis_prefix.clone();
                crate::cluster::Link::connect(cluster.clone()).map_err(|e| anyhow::anyhow!(e))?;
                Some(cluster)
            }
            None => None,
        };
        print_banner(bound, &args, color);
        print_storage(durable.as_ref(), args.redis.is_some(), fd_limit);
        let (budget, why) = args.memory_budget();
        let line = format!(
            "Memory budget: {:.0} MiB for queued messages and unsent frames ({why}).",
            budget as f64 / (1024.0 * 1024.0)
        );
        say!("{}", line.dimmed());
        let ring = LogRing::default();
        let log = match (args.quiet, args.dashboard) {
            (true, _) => None,
            (false, true) => Some(EventLog::spawn(Box::new(ring.clone()), color, || {
                Some(crate::terminal::output_width().unwrap_or(120))
            })),
            (false, false) => Some(EventLog::spawn(
                Box::new(std::io::stdout()),
                color,
                crate::terminal::output_width,
            )),
        };
        let dashboard = args.dashboard.then(|| Dashboard {
            ring,
            color,
            banner: dashboard_banner(&connect_addresses(bound)),
            view: args.view.view(),
        });
        let mut config = args.config(durable, dashboard, budget);
        if let Some(recorder) = &recorder {
            say!(
                "Recording every input to {}{}: `vivachat replay {}` steps through it.",
                recorder.path().display(),
                match args.redis {
                    Some(_) => " (this node's inputs: the other nodes record their own)",
                    None => "",
                },
                recorder.path().display()
            );
            config.record = Some(recorder.clone());
        }
        if let Some(cluster) = cluster {
            say!(
                "Cluster node {} on Redis {}: presence, queues, groups, blocks and claims are shared; this node keeps its own sockets.",
                cluster.node_id.bold(),
                cluster.url
            );
            config.cluster = Some(cluster);
        }
        let report = server::run(listener, config, log, shutdown)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        println!(
            "\n{} after {:.1}s, {} connection(s) served. Final operation counts:",
            "Stopped".bold(),
            report.uptime.as_secs_f64(),
            report.connections_served
        );
        println!("{}", crate::inspect::render::ops_table(&report.ops, color));
        println!("{}", crate::core::ops::TIMING_NOTE);
        println!("{}", crate::core::ops::COST_NOTE);
        if let Some(path) = &args.data {
            println!("Everything acknowledged is saved in {}.", path.display());
        }
        if let Some(recorder) = &recorder {
            println!(
                "Recorded {} input(s) in {}: `vivachat replay {}` steps through them.",
                recorder.recorded(),
                recorder.path().display(),
                recorder.path().display()
            );
        }
        Ok(())
    })
}

/// The dashboard's first line: where students join, the board, and the
/// terminal clients' address, for the first address the server answers on.
fn dashboard_banner(addresses: &[SocketAddr]) -> String {
    let Some(first) = addresses.first() else {
        return String::new();
    };
    let mut banner =
        format!("page http://{first}/ · board http://{first}/board · ws://{first}/ws/NAME");
    if addresses.len() > 1 {
        banner += &format!(
            " (and {} more address(es), printed at start)",
            addresses.len() - 1
        );
    }
    banner
}

/// Binds the listening socket, or explains in one line why it cannot.
async fn bind(args: &ServeArgs) -> anyhow::Result<tokio::net::TcpListener> {
    let addr = SocketAddr::new(args.host, args.port);
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        let hint = match e.kind() {
            std::io::ErrorKind::AddrInUse => format!(
                "port {} is already in use: stop the other server or choose another with --port",
                args.port
            ),
            std::io::ErrorKind::PermissionDenied => {
                "permission denied: ports below 1024 need root; use --port 8000".into()
            }
            std::io::ErrorKind::AddrNotAvailable => format!(
                "{} is not an address of this machine: use 127.0.0.1 or 0.0.0.0",
                args.host
            ),
            _ => "check --host and --port".into(),
        };
        anyhow::anyhow!("cannot listen on {addr}: {e} ({hint})")
    })
}

/// Durable or not, and a warning when few files may be opened.
fn print_storage(durable: Option<&Durable>, cluster: bool, fd_limit: Option<(u64, u64)>) {
    match durable {
        None if cluster => say!(
            "{}",
            "In Redis: queues, groups, blocks and name claims outlive this node; they are as durable as Redis is (redis-server --appendonly yes --appendfsync always keeps them across its restarts and power cuts)."
                .dimmed()
        ),
        Some(d) => say!(
            "Durable: {} ({}); every `queued` ack is sent after the write ({}).",
            d.store.path().display().to_string().bold(),
            d.loaded.summary(),
            d.store.durability()
        ),
        None => say!(
            "{}",
            "In memory: queued messages, groups, blocks and name claims are lost when the server stops (--data PATH keeps them)."
                .dimmed()
        ),
    }
    if let Some((_, after)) = fd_limit.filter(|(_, after)| *after < 4096) {
        say!(
            "{}",
            format!(
                "Note: this process may open only {after} files, so at most about {after} connections; \
                 raise it with `ulimit -n 65536` before starting."
            )
            .yellow()
        );
    }
}

fn print_banner(bound: SocketAddr, args: &ServeArgs, color: bool) {
    say!(
        "{} listening on {}",
        "vivachat".bold().green(),
        bound.to_string().bold()
    );
    let join = Site::new(bound, args.public_url.as_deref(), &[], None).join_url;
    let reachable = args.public_url.is_some() || !bound.ip().is_loopback();
    say!(
        "Students: open {} on a phone or laptop{}",
        join.as_str().bold().cyan(),
        if reachable { ", or scan:" } else { "" }
    );
    match qr_text(&join, color).filter(|_| reachable) {
        Some(qr) => println!("{qr}"), // never wrapped: it is a picture
        None => say!(
            "{}",
            "  (this machine only: `serve --host 0.0.0.0` lets phones on the network join, \
             and prints a QR code to scan)"
                .dimmed()
        ),
    }
    say!(
        "Projector: {}  (the five structures, live)",
        format!("http://{}/board", loopback_for(bound))
            .bold()
            .cyan()
    );
    say!("Terminal clients (`vivachat client`) connect to one of:");
    for addr in connect_addresses(bound) {
        let note = if addr.ip().is_loopback() {
            "  (this machine only)"
        } else {
            "  (other machines on the network)"
        };
        say!(
            "  {}{}",
            format!("ws://{addr}/ws/YOUR_NAME").cyan(),
            note.dimmed()
        );
    }
    say!(
        "Inspect the structures: {}   Health: {}",
        format!("http://{}/inspect", loopback_for(bound)).cyan(),
        format!("http://{}/healthz", loopback_for(bound)).cyan()
    );
    if !bound.ip().is_loopback() && args.admin_token.is_none() {
        say!(
            "{}",
            "Warning: listening beyond this machine without --admin-token. /inspect (every queued \
             message) still answers this machine only; pass --admin-token TOKEN to open it to others. \
             Names are open until claimed: `vivachat client` claims yours with a token."
                .yellow()
                .bold()
        );
    }
    if args.quiet {
        say!("Event log off (--quiet). Ctrl-C stops the server.");
    } else if args.dashboard {
        say!("Dashboard on: the tables redraw on every change. Ctrl-C stops the server.");
    } else {
        say!("Event log below: one line per event, with each structure operation and its cost. Ctrl-C stops the server.");
    }
}

fn loopback_for(bound: SocketAddr) -> SocketAddr {
    if bound.ip().is_unspecified() {
        let ip: IpAddr = if bound.is_ipv6() {
            std::net::Ipv6Addr::LOCALHOST.into()
        } else {
            std::net::Ipv4Addr::LOCALHOST.into()
        };
        SocketAddr::new(ip, bound.port())
    } else {
        bound
    }
}

/// An http(s) URL or origin, as `--public-url` and `--allow-origin` take it.
pub fn parse_url(raw: &str) -> Result<String, String> {
    let t = raw.trim().trim_end_matches('/');
    let rest = t
        .strip_prefix("http://")
        .or_else(|| t.strip_prefix("https://"))
        .ok_or_else(|| format!("{raw:?} must start with http:// or https://"))?;
    if rest.is_empty() || rest.contains(char::is_whitespace) {
        return Err(format!(
            "{raw:?} has no host, like https://chat.example.org"
        ));
    }
    Ok(format!("{t}/"))
}

pub fn parse_rate(raw: &str) -> Result<f64, String> {
    raw.parse::<f64>()
        .ok()
        .filter(|r| r.is_finite() && *r > 0.0)
        .ok_or_else(|| format!("{raw:?} is not a positive number of requests per second"))
}

pub fn parse_seconds(raw: &str) -> Result<f64, String> {
    raw.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && (0.0..=86_400.0).contains(s))
        .ok_or_else(|| format!("{raw:?} is not a number of seconds from 0 to 86400"))
}

/// "64MiB", "2GiB", "500kB", "1000": a size in bytes (binary and decimal units).
pub fn parse_size(raw: &str) -> Result<u64, String> {
    let t = raw.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mib" => 1024.0 * 1024.0,
        "g" | "gb" => 1e9,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        _ => {
            return Err(format!(
                "{raw:?}: unknown unit; use a size like 64MiB, 500MB or 2GiB"
            ))
        }
    };
    number
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite() && *n > 0.0)
        .map(|n| (n * scale) as u64)
        .filter(|bytes| *bytes >= 4096)
        .ok_or_else(|| format!("{raw:?} is not a size of at least 4KiB, like 64MiB"))
}

/// `--node-id`: safe in Redis keys and fields.
fn parse_node_id(raw: &str) -> Result<String, String> {
    if crate::cluster::valid_node_id(raw) {
        Ok(raw.to_string())
    } else {
        Err(format!(
            "{raw:?}: a node id is 1 to 64 letters, digits, '.', '-' or '_'"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_in_binary_and_decimal_units() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("500kB"), Ok(500_000));
        assert_eq!(parse_size("1.5 MiB"), Ok(1_572_864));
        assert_eq!(parse_size("8192"), Ok(8192));
        assert!(parse_size("12").is_err(), "below 4 KiB");
        assert!(parse_size("64 parsecs").is_err());
        assert!(parse_size("-1MiB").is_err());
    }
}
