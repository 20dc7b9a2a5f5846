//! The HTTP side: the routes, the WebSocket upgrade with its admission
//! checks (origin, name, connection slots, name claim), `/inspect` with its
//! access rule, and `/healthz`. The pages are in `pages.rs`, the board's
//! feed in `board.rs`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::admission::Admitted;
use super::conn::{Asked, Resume};
use super::handshake::Peer;
use super::hub::Hub;
use super::limits::{Full, Slot, SlotLimits};
use super::site::Refusal;
use super::upgrade::{NotAnUpgrade, Upgrade};
use super::{board, connection, pages};
use crate::names::{Name, UserId};

pub(crate) fn routes(hub: Arc<Hub>) -> Router {
    Router::new()
        .route("/", get(pages::chat))
        .route("/board", get(pages::board))
        .route("/board/feed", get(board::feed))
        .route("/assets/{name}", get(pages::asset))
        .route("/join.svg", get(pages::join_qr))
        .route("/names/{user}", get(pages::name_status))
        .route("/healthz", get(|| async { "ok" }))
        .route("/inspect", get(inspect))
        .route("/ws/{user}", get(ws_upgrade))
        .fallback(fallback)
        .with_state(hub)
}

fn bad_name(raw: &str, why: impl std::fmt::Display) -> Response {
    (
        StatusCode::BAD_REQUEST,
        format!(
            "invalid user name {raw:?}: {why}. Connect to /ws/NAME with NAME of 1-32 characters from [A-Za-z0-9_.-]\n"
        ),
    )
        .into_response()
}

/// The query of `/ws/NAME?token=SECRET&resume=N&epoch=E`; other parameters
/// are ignored.
#[derive(serde::Deserialize)]
struct ConnectQuery {
    token: Option<String>,
    resume: Option<String>,
    epoch: Option<String>,
    presence: Option<String>,
}

/// `?presence=batched` (v1.2), or nothing (v1's frame per change).
fn presence_of(q: &ConnectQuery) -> Result<bool, String> {
    match q.presence.as_deref() {
        None => Ok(false),
        Some("batched") => Ok(true),
        Some(other) => Err(format!(
            "presence={other:?} is not a presence mode: give presence=batched for one presence_diff per tick (v1.2), or leave it out for a presence frame per change"
        )),
    }
}

/// `?resume=N` (and the `epoch` its N belongs to), checked before the upgrade.
fn resume_of(q: &ConnectQuery) -> Result<Option<Resume>, String> {
    let Some(raw) = &q.resume else {
        return Ok(None);
    };
    // Digits only: `parse` alone would also take "+3".
    let digits = !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit());
    let from = raw.parse::<u64>().ok().filter(|_| digits).ok_or_else(|| {
        format!(
            "resume={raw:?} is not a message id: give the highest id this client has received, \
             a whole number from 0 up (0 the first time)"
        )
    })?;
    let epoch = match &q.epoch {
        Some(e) if !(1..=32).contains(&e.len()) || !e.bytes().all(|b| b.is_ascii_alphanumeric()) => {
            return Err(format!(
                "epoch={e:?} is not one this server gives: send back the welcome's \"epoch\" as it came"
            ))
        }
        e => e.clone(),
    };
    Ok(Some(Resume { from, epoch }))
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

async fn ws_upgrade(
    State(hub): State<Arc<Hub>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    query: Result<Query<ConnectQuery>, axum::extract::rejection::QueryRejection>,
    upgrade: Result<Upgrade, NotAnUpgrade>,
) -> Response {
    let remote = peer.addr;
    // First, before anything is looked at: a page of another site may not
    // talk through a visitor's browser (cross-site WebSocket hijacking).
    if let Err(refused) = check_origin(&hub, &headers, remote) {
        return refused.into_response();
    }
    // The name is checked before the upgrade, so a bad one changes nothing.
    let user = match path {
        Ok(Path(raw)) => match Name::parse(&raw) {
            Ok(user) => user,
            Err(e) => return bad_name(&raw, e),
        },
        Err(e) => return bad_name("?", e.body_text()),
    };
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => return rejection.into_response(),
    };
    if hub.shutdown.has_begun() {
        return (StatusCode::SERVICE_UNAVAILABLE, "server shutting down\n").into_response();
    }
    // Cluster mode: without Redis this node can register nobody.
    if let Some(why) = hub.cluster.as_ref().and_then(|l| l.down_reason()) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{why}; try again in a moment\n"),
        )
            .into_response();
    }
    let slot = match reserve_slot(&hub, &user, remote) {
        Ok(slot) => slot,
        Err(refused) => return refused.into_response(),
    };
    if let Err(refused) = devices_across_the_cluster(&hub, &user).await {
        return refused.into_response();
    }
    // The claim is checked last: it is the one check that costs real CPU.
    let (token, asked) = match &query {
        Ok(Query(q)) => match resume_of(q).and_then(|resume| {
            Ok(Asked {
                resume,
                presence_batched: presence_of(q)?,
            })
        }) {
            Ok(asked) => (q.token.as_deref(), asked),
            Err(why) => return (StatusCode::BAD_REQUEST, format!("{why}\n")).into_response(),
        },
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{}\n", e.body_text())).into_response(),
    };
    let admitted = match admit(&hub, &user, token, remote).await {
        Ok(admitted) => admitted,
        Err(refused) => return refused.into_response(),
    };
    peer.upgraded();
    accept(
        hub,
        upgrade,
        Accepted {
            user,
            remote,
            admitted,
            asked,
            slot,
        },
    )
}

/// The Origin rule (`site.rs`); a refusal is logged and answered 403.
fn check_origin(hub: &Hub, headers: &HeaderMap, remote: SocketAddr) -> Result<(), Refusal> {
    let origin = header_str(headers, header::ORIGIN);
    hub.site
        .check_origin(origin, header_str(headers, header::HOST))
        .map_err(|why| {
            if let Some(log) = &hub.log {
                log.line(format!("! refused an upgrade from {remote}: {why}"));
            }
            (StatusCode::FORBIDDEN, format!("{why}\n"))
        })
}

/// Cluster mode: a user's devices on every node count against
/// --max-connections-per-user (HLEN of their HASH in Redis, O(1)); the other
/// connection limits protect one process, so they stay per node. The round
/// trip runs on tokio's blocking pool, never on a worker.
async fn devices_across_the_cluster(hub: &Hub, user: &UserId) -> Result<(), Refusal> {
    let Some(link) = hub.cluster.clone() else {
        return Ok(());
    };
    let key = link.key(&format!("devices:{user}"));
    let devices = tokio::task::spawn_blocking(move || {
        link.run("HLEN", "O(1)", |c| {
            redis::cmd("HLEN").arg(&key).query::<usize>(c)
        })
    })
    .await;
    let max = hub.config.net.max_connections_per_user;
    if matches!(devices, Ok(Ok(n)) if n >= max) {
        return Err((
            StatusCode::TOO_MANY_REQUESTS,
            format!("{user} already has {max} connections open across the cluster (--max-connections-per-user); close a device first\n"),
        ));
    }
    Ok(())
}

/// The claim check (`admission.rs`), with what it decided said in the log.
async fn admit(
    hub: &Hub,
    user: &UserId,
    token: Option<&str>,
    remote: SocketAddr,
) -> Result<Admitted, Refusal> {
    match hub
        .gate
        .admit(user, token, remote.ip().to_canonical())
        .await
    {
        Ok(admitted) => {
            if admitted.claimed_now {
                if let Some(log) = &hub.log {
                    log.line(format!(
                        "+ {user} claimed with a token (only its Argon2id hash is kept); \
                         from now on connections as {user} need it"
                    ));
                }
            }
            Ok(admitted)
        }
        Err(refused) => {
            if let Some(log) = &hub.log {
                log.line(format!(
                    "! refused {user} from {remote}: {}",
                    refused.reason
                ));
            }
            Err((refused.status, format!("{}\n", refused.reason)))
        }
    }
}

/// Everything the upgrade checked, handed to the connection it becomes.
struct Accepted {
    user: UserId,
    remote: SocketAddr,
    admitted: Admitted,
    asked: Asked,
    /// Held for the connection's lifetime; freed with it, or with the
    /// closure if the upgrade never completes.
    slot: Slot,
}

/// Completes the upgrade with this server's buffer and size limits, and
/// serves the connection as a task shutdown waits for.
fn accept(hub: Arc<Hub>, upgrade: Upgrade, accepted: Accepted) -> Response {
    // tungstenite refuses anything past this on its own; between our limit and
    // this one, the reader answers `too_large` itself (see connection.rs).
    let net = &hub.config.net;
    let hard_limit = net
        .max_message_bytes
        .saturating_mul(2)
        .max(net.max_message_bytes + 65_536);
    let config = WebSocketConfig::default()
        .read_buffer_size(net.read_buffer_bytes)
        // Each frame goes straight to the socket's own batch (`socket.rs`):
        // tungstenite keeps no second one.
        .write_buffer_size(0)
        .max_write_buffer_size(hard_limit)
        .max_message_size(Some(hard_limit))
        .max_frame_size(Some(hard_limit));
    upgrade.accept(config, move |socket| {
        let tasks = hub.shutdown.tasks();
        tasks.track_future(async move {
            let Accepted {
                user,
                remote,
                admitted,
                asked,
                slot: _slot,
            } = accepted;
            connection::serve(hub, socket, user, remote, admitted, asked).await
        })
    })
}

/// `/ws` and `/ws/` (empty name) and `/ws/a/b` are bad names, not missing pages.
async fn fallback(uri: Uri) -> Response {
    let path = uri.path();
    if path == "/ws" || path.starts_with("/ws/") {
        let raw = path.trim_start_matches("/ws").trim_start_matches('/');
        return bad_name(raw, "not a single non-empty path segment");
    }
    (
        StatusCode::NOT_FOUND,
        "not found: the routes are / (the chat page), /board (the structures, for a projector), \
         /ws/NAME (WebSocket), /inspect and /healthz\n",
    )
        .into_response()
}

async fn inspect(
    State(hub): State<Arc<Hub>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
) -> Response {
    if let Err(refused) = hub.site.may_see_everything(&peer.addr, &headers) {
        return refused.into_response();
    }
    let inspection = match hub.inspection().await {
        Some(Ok(inspection)) => inspection,
        Some(Err(why)) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot read the shared structures now ({why}); try again in a moment\n"),
            )
                .into_response()
        }
        None => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is shutting down\n".to_string(),
            )
                .into_response()
        }
    };
    match serde_json::to_string(&inspection) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Reserves one of the connection slots (`--max-connections`, `-per-ip`,
/// `-per-user`), or answers 503/429 with the limit that was reached.
fn reserve_slot(hub: &Hub, user: &Name, remote: SocketAddr) -> Result<Slot, (StatusCode, String)> {
    let net = &hub.config.net;
    let ip = remote.ip().to_canonical();
    let limits = SlotLimits {
        total: net.max_connections,
        per_ip: net.max_connections_per_ip,
        per_user: net.max_connections_per_user,
    };
    hub.slots.reserve(ip, user, limits).map_err(|full| {
        let (status, why) = match full {
            Full::Server(n) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the server holds its maximum of {n} connections (--max-connections); try again later"),
            ),
            Full::Address(n) => (
                StatusCode::TOO_MANY_REQUESTS,
                format!("{ip} already holds {n} connections (--max-connections-per-ip); close some first"),
            ),
            Full::User(n) => (
                StatusCode::TOO_MANY_REQUESTS,
                format!("{user} already has {n} connections open (--max-connections-per-user); close a device first"),
            ),
        };
        if let Some(log) = &hub.log {
            log.line(format!("! refused {user} from {remote}: {why}"));
        }
        (status, format!("{why}\n"))
    })
}
