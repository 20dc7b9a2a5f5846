//! Lecture mode: record what the core did, or write it as a scenario, then
//! step through it forwards and backwards, on the board and in the terminal.
//!
//! - [`record`]: the recording's format, and `serve --record`'s writer.
//! - [`scenario`]: a student's script of actions, played into a recording.
//! - [`replay`]: a recording fed to a fresh core, one input per step. No I/O.
//! - [`page`]: `vivachat replay`'s board, `/inspect` and the step feed (the shell).
//! - [`terminal`]: `vivachat replay --terminal`.
//! - [`export`]: `vivachat replay --export steps.md`.

pub mod export;
pub mod page;
pub mod record;
pub mod replay;
pub mod scenario;
pub mod terminal;

use std::sync::Arc;

use anyhow::Context;
use colored::Colorize;

use clap::Args;
use record::Recording;

/// `vivachat replay --help`'s examples.
pub const REPLAY_HELP: &str = "\
Examples:
  vivachat serve --record class.jsonl          record a class (every input the core receives)
  vivachat replay class.jsonl                  the board in lecture mode on http://127.0.0.1:8000/
  vivachat replay class.jsonl --terminal       the same steps here: Enter next, b back, q quits
  vivachat replay --scenario demos/scenarios/message-flow.txt --terminal
  vivachat replay class.jsonl --export steps.md

A scenario has one action per line, the user in front, in the terminal client's words:
  alice> /to bob        alice> hello        bob> (connects)        bob> /join g1
  alice> #g1 hi all     bob> (reads)        carol> (crashes)       bob> (resumes 3)
  bob@laptop> (connects) opens a second device of bob's; (leaves) closes after reading.";

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The recording, as `serve --record FILE` wrote it.
    #[arg(
        value_name = "FILE",
        required_unless_present = "scenario",
        conflicts_with = "scenario"
    )]
    pub file: Option<std::path::PathBuf>,
    /// Play this scenario (one action per line, e.g. `alice> hello`) through the real core instead.
    #[arg(long, value_name = "FILE")]
    pub scenario: Option<std::path::PathBuf>,
    /// Address to serve the board on; 0.0.0.0 shows it to the LAN (it shows every message).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: std::net::IpAddr,
    /// TCP port (0 picks a free one and prints it).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Step in this terminal instead of on the board: Enter/→ next, b/← back, Home/End, q quits.
    #[arg(long, conflicts_with = "export")]
    pub terminal: bool,
    /// Write every step's narration and tables to this Markdown file, then exit.
    #[arg(long, value_name = "FILE")]
    pub export: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub view: crate::inspect::ViewArgs,
}

/// `vivachat replay`: reads the recording (or plays the scenario), then
/// exports it, steps through it here, or serves the lecture board.
pub fn run(args: ReplayArgs, color: bool) -> anyhow::Result<()> {
    let (recording, source) = match (&args.file, &args.scenario) {
        (_, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the scenario {}", path.display()))?;
            let recording =
                scenario::play(&text).map_err(|e| anyhow::anyhow!("{}, {e}", path.display()))?;
            (recording, path.display().to_string())
        }
        (Some(path), None) => (Recording::read(path)?, path.display().to_string()),
        (None, None) => anyhow::bail!("give a recording (vivachat replay FILE) or --scenario FILE"),
    };
    if let Some(node) = &recording.header.node {
        eprintln!(
            "{}",
            format!(
                "This recording is node {node}'s: it holds the inputs that reached this node's core. \
                 What other nodes did reached it only through Redis, so the replay shows one server \
                 with these inputs, not the cluster's shared state."
            )
            .dimmed()
        );
    }
    let recording = Arc::new(recording);
    if let Some(out) = &args.export {
        let text = export::markdown(recording.clone(), &source, &args.view.view());
        std::fs::write(out, text).with_context(|| format!("cannot write {}", out.display()))?;
        println!(
            "Wrote {} step(s) of {source} to {}.",
            recording.lines.len(),
            out.display()
        );
        return Ok(());
    }
    if args.terminal {
        return terminal::run(recording, &source, args.view.view(), color);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("could not start the async runtime")?;
    runtime.block_on(async move {
        let address = std::net::SocketAddr::new(args.host, args.port);
        let listener = tokio::net::TcpListener::bind(address).await.map_err(|e| {
            anyhow::anyhow!(
                "cannot listen on {address}: {e}. Another program (a `vivachat serve`?) may have the \
                 port: choose another with --port, or --port 0 for any free one"
            )
        })?;
        let bound = listener.local_addr()?;
        let signal = crate::terminal::interrupted().context("cannot handle Ctrl-C")?;
        println!(
            "Lecture mode: {} step(s) of {source}.\nvivachat replay listening on {bound}\n  Board: {}  (→/Space next, ← previous, Home, End; Predict hides each step's operations until the next press)\n  Tables: vivachat inspect --url http://{bound} (follows the board)\nCtrl-C stops.",
            recording.lines.len(),
            format!("http://{bound}/").bold()
        );
        page::serve(listener, recording, source, signal).await?;
        Ok(())
    })
}
