//! `vivachat serve`: the front end around [`server::run`]: open the data
//! file, bind, print where to connect, build the [`Config`] from the flags
//! once, run until Ctrl-C or SIGTERM, and print the final operation counts.

use std::net::{IpAddr, SocketAddr};

use anyhow::Context;
use colored::Colorize;

use crate::cli::ServeArgs;
use crate::core::CoreConfig;
use crate::event_log::{EventLog, LogRing};
use crate::server::config::timeout;
use crate::server::{self, Config, Dashboard, NetLimits};
use crate::store::{Durable, Store};

impl ServeArgs {
    /// The server's configuration, read from the flags in one place.
    pub fn config(&self, durable: Option<Durable>, dashboard: Option<Dashboard>) -> Config {
        Config {
            core: CoreConfig {
                max_offline: self.max_offline as usize,
                trace: !self.quiet,
                max_text_chars: self.max_text_chars.map(|n| n as usize),
                max_groups: self.max_groups as usize,
                max_group_size: self.max_group_size as usize,
                max_blocked: self.max_blocked as usize,
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
            ..Config::default()
        }
    }
}

pub fn run(args: ServeArgs, color: bool) -> anyhow::Result<()> {
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
        print_banner(bound, &args);
        print_storage(durable.as_ref(), fd_limit);
        let ring = LogRing::default();
        let log = match (args.quiet, args.dashboard) {
            (true, _) => None,
            (false, true) => Some(EventLog::spawn(Box::new(ring.clone()), color)),
            (false, false) => Some(EventLog::spawn(Box::new(std::io::stdout()), color)),
        };
        let dashboard = args.dashboard.then(|| Dashboard {
            ring,
            color,
            banner: format!(
                "connect: {}",
                connect_addresses(bound)
                    .iter()
                    .map(|a| format!("ws://{a}/ws/NAME"))
                    .collect::<Vec<_>>()
                    .join("  ")
            ),
        });
        let config = args.config(durable, dashboard);
        let report = server::run(listener, config, log, shutdown).await?;
        println!(
            "\n{} after {:.1}s, {} connection(s) served. Final operation counts:",
            "Stopped".bold(),
            report.uptime.as_secs_f64(),
            report.connections_served
        );
        println!("{}", crate::inspect::render::ops_table(&report.ops, color));
        if let Some(path) = &args.data {
            println!("Everything acknowledged is saved in {}.", path.display());
        }
        Ok(())
    })
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
fn print_storage(durable: Option<&Durable>, fd_limit: Option<(u64, u64)>) {
    match durable {
        Some(d) => println!(
            "Durable: {} ({}); every `queued` ack is sent after the write.",
            d.store.path().display().to_string().bold(),
            d.loaded.summary()
        ),
        None => println!(
            "{}",
            "In memory: queued messages, groups, blocks and name claims are lost when the server stops (--data PATH keeps them)."
                .dimmed()
        ),
    }
    if let Some((_, after)) = fd_limit.filter(|(_, after)| *after < 4096) {
        println!(
            "{}",
            format!(
                "Note: this process may open only {after} files, so at most about {after} connections; \
                 raise it with `ulimit -n 65536` before starting."
            )
            .yellow()
        );
    }
}

/// The addresses people can type: with an unspecified host, every interface's.
fn connect_addresses(bound: SocketAddr) -> Vec<SocketAddr> {
    if !bound.ip().is_unspecified() {
        return vec![bound];
    }
    let want_v6 = bound.is_ipv6();
    let mut addrs: Vec<SocketAddr> = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .map(|iface| iface.ip())
        // 0.0.0.0 listens on IPv4 only; :: on both on most systems.
        .filter(|ip| want_v6 || ip.is_ipv4())
        .filter(|ip| !matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80))
        .map(|ip| SocketAddr::new(ip, bound.port()))
        .collect();
    addrs.sort_by_key(|a| (a.ip().is_loopback(), a.is_ipv6(), a.ip()));
    addrs.dedup();
    addrs
}

fn print_banner(bound: SocketAddr, args: &ServeArgs) {
    println!(
        "{} listening on {}",
        "vivachat".bold().green(),
        bound.to_string().bold()
    );
    println!("Connect a client to one of:");
    for addr in connect_addresses(bound) {
        let note = if addr.ip().is_loopback() {
            "  (this machine only)"
        } else {
            "  (other machines on the network)"
        };
        println!(
            "  {}{}",
            format!("ws://{addr}/ws/YOUR_NAME").cyan(),
            note.dimmed()
        );
    }
    println!(
        "Inspect the structures: {}   Health: {}",
        format!("http://{}/inspect", loopback_for(bound)).cyan(),
        format!("http://{}/healthz", loopback_for(bound)).cyan()
    );
    if !bound.ip().is_loopback() && args.admin_token.is_none() {
        println!(
            "{}",
            "Warning: listening beyond this machine without --admin-token. /inspect (every queued \
             message) still answers this machine only; pass --admin-token TOKEN to open it to others. \
             Names are open until claimed: `vivachat client` claims yours with a token."
                .yellow()
                .bold()
        );
    }
    if args.quiet {
        println!("Event log off (--quiet). Ctrl-C stops the server.");
    } else if args.dashboard {
        println!("Dashboard on: the tables redraw on every change. Ctrl-C stops the server.");
    } else {
        println!("Event log below: one line per event, with each structure operation and its cost. Ctrl-C stops the server.");
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
