//! vivachat: a real-time WebSocket chat server whose every data structure is
//! instrumented, narrated and justified by Big-O.
//!
//! # Layout
//! - [`names`]: user and group names, validated once at the edge.
//! - [`protocol`]: the wire contract in both directions, typed.
//! - [`core`]: the five structures and every routing rule; no I/O.
//! - [`board`]: what the projector's `/board` draws, built from a snapshot; no I/O.
//! - [`inspection`]: the `/inspect` document (the core's snapshot + server facts).
//! - [`tokens`]: name tokens: random generation, Argon2id hashing and checking.
//! - [`store`]: durable mode (`serve --data`): SQLite with group commit.
//! - [`cluster`]: `serve --redis`: the shared structures in Redis, so several nodes are one server.
//! - [`server`]: the network shell; `server::run(listener, config, log, shutdown)`.
//! - [`lecture`]: `serve --record` and `vivachat replay`: step through what the core did.
//! - [`event_log`]: narrates each event with the structure operations it cost.
//! - [`output`]: clock, duration and colour formatting shared by every view.
//! - [`terminal`]: full-screen redraw, width clipping, the shared signal handler.
//! - [`inspect`]: `vivachat inspect`: fetch `/inspect` and render its tables.
//! - [`client`]: `vivachat client`: the terminal (and scriptable) chat client.
//! - [`bench`]: `vivachat bench`: Big-O comparisons, core and load benchmarks.
//! - [`serve`]: `vivachat serve`: flags to config, banner, run, final counts.
//! - [`cli`]: the command line: clap types and dispatch.

pub mod bench;
pub mod board;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod core;
pub mod event_log;
pub mod inspect;
pub mod inspection;
pub mod lecture;
pub mod names;
pub mod output;
pub mod protocol;
pub mod serve;
pub mod server;
pub mod store;
pub mod terminal;
pub mod tokens;
