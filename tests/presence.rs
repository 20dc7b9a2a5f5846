//! Batched presence (v1.2) on one real server, with a tick long enough to
//! act inside one: what coalescing promises, seen by a real WebSocket client.

mod common;

use std::time::Duration;

use common::TestServer;
use serde_json::json;
use vivachat::server::Config;

#[tokio::test]
async fn an_arrival_and_departure_within_one_tick_reach_nobody() {
    let server = TestServer::start_alone(Config {
        presence_tick: Duration::from_secs(3),
        ..Config::default()
    })
    .await;
    let mut obs = server
        .connect_raw("/ws/obs?presence=batched")
        .await
        .unwrap();
    assert_eq!(obs.recv().await["presence"], "batched");
    // In step with the ticks: the diff of obs's own arrival (shared by
    // every batched connection, so it names obs) has just been sent; the
    // next tick is about 3 s away, and what follows takes milliseconds.
    assert_eq!(
        obs.recv().await,
        json!({"type":"presence_diff","online":["obs"],"offline":[]})
    );
    let alice = server.connect("alice").await;
    alice.close().await;
    let _carol = server.connect("carol").await;
    assert_eq!(
        obs.recv().await,
        json!({"type":"presence_diff","online":["carol"],"offline":[]}),
        "alice came and went within one tick: nobody hears of her"
    );
    server.stop().await;
}
