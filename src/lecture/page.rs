//! `vivachat replay`'s web side: the board in lecture mode at `/` and
//! `/board`, each step as JSON at `/lecture/step?k=K`, and `/inspect` at
//! the step the board shows (or `?step=K`), so `vivachat inspect` beside
//! the board follows the presenter.
//!
//! Every answer is computed by the cursor (`replay.rs`), behind one mutex:
//! a class has one presenter, so there is nothing to share it with.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::record::Recording;
use super::replay::Cursor;
use crate::inspection::{Inspection, LectureInfo, ServerInfo};
use crate::server::pages;

struct Lecture {
    cursor: Mutex<Cursor>,
    /// The file (or scenario) being stepped through, for `/inspect`.
    source: String,
}

#[derive(serde::Deserialize)]
struct StepQuery {
    k: Option<usize>,
    step: Option<usize>,
}

fn routes(lecture: Arc<Lecture>) -> Router {
    Router::new()
        .route("/", get(pages::lecture))
        .route("/board", get(pages::lecture))
        .route("/assets/{name}", get(pages::asset))
        .route("/lecture/step", get(step))
        .route("/inspect", get(inspect))
        .route("/healthz", get(|| async { "ok" }))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                "not here: a replay serves /, /board, /lecture/step?k=K and /inspect\n",
            )
        })
        .with_state(lecture)
}

/// `GET /lecture/step?k=K`: moves the board to step K and answers it.
async fn step(State(lecture): State<Arc<Lecture>>, Query(q): Query<StepQuery>) -> Response {
    let mut cursor = lecture.cursor.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(k) = q.k.or(q.step) {
        cursor.seek(k);
    }
    json(&cursor.view())
}

/// `GET /inspect[?step=K]`: the `/inspect` document of step K, by default
/// the step the board shows (the board stays where it is).
async fn inspect(State(lecture): State<Arc<Lecture>>, Query(q): Query<StepQuery>) -> Response {
    let mut cursor = lecture.cursor.lock().unwrap_or_else(|p| p.into_inner());
    let shown = cursor.step();
    let k = q.step.or(q.k).unwrap_or(shown);
    cursor.seek(k);
    let document = inspection(&cursor, &lecture.source);
    cursor.seek(shown);
    json(&document)
}

fn json(value: &impl serde::Serialize) -> Response {
    match serde_json::to_string(value) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

/// The `/inspect` document of the cursor's step.
pub fn inspection(cursor: &Cursor, source: &str) -> Inspection {
    Inspection {
        snapshot: cursor.snapshot(),
        server: Some(ServerInfo {
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_ms: cursor.elapsed_ms(),
            // "queued 3s ago" is as of this step, not as of today.
            taken_at_ms: cursor.time_ms(),
            lecture: Some(LectureInfo {
                step: cursor.step() as u64,
                steps: cursor.steps() as u64,
                source: source.to_string(),
            }),
            ..ServerInfo::default()
        }),
    }
}

/// Serves the lecture board on `listener` until `stop` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    recording: Arc<Recording>,
    source: String,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let lecture = Arc::new(Lecture {
        cursor: Mutex::new(Cursor::new(recording)),
        source,
    });
    axum::serve(
        listener,
        routes(lecture).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(stop)
    .await
}
