//! vivachat: a real-time WebSocket chat server whose every data structure is
//! instrumented, narrated and justified by Big-O.
//!
//! # Layout
//! - [`names`]: user and group names, validated once at the edge.
//! - [`protocol`]: the wire protocol v1: parsing requests, serialising frames.
//! - [`core`]: the functional core: the seed's five structures behind the
//!   [`core::Structures`] trait, and in `core/routing.rs` every routing rule.
//!   No I/O; unit-tested directly.
//! - [`server`]: the network shell (tokio + axum WebSockets): one reader and
//!   one writer per connection, carrying out what the core decides.
//!   `server::run(listener, config, shutdown)` is the seam tests use.
//! - [`store`]: durable mode (`serve --data`): the queues, groups, blocks
//!   and name claims in SQLite, written through with group commit.
//! - [`event_log`]: narrates each event with the structure operations it cost.
//! - [`cli`]: the `vivachat` command line.

pub mod bench;
pub mod cli;
pub mod client;
pub mod core;
pub mod event_log;
pub mod inspect;
pub mod inspection;
pub mod names;
pub mod output;
pub mod protocol;
pub mod serve;
pub mod server;
pub mod store;
pub mod terminal;
pub mod tokens;
