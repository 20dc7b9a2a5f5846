//! The browser side: the chat page at `/`, the projector's board at `/board`,
//! their scripts and styles, the join QR code and the name check the chat
//! page asks before it connects.
//!
//! Every file is compiled into the binary (a classroom may have no internet,
//! and a fresh machine has no front-end build step), and every page is sent
//! with a Content-Security-Policy that lets it load and connect to this
//! server only: no inline script runs, so a message that smuggles HTML in
//! could not run code even if it were ever inserted as HTML.

use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::handshake::Peer;
use super::hub::Hub;
use crate::names::Name;

/// Only this server, for everything; nothing inline, no frames, no plugins.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; manifest-src 'self'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One embedded file: its path under `/assets/`, type and contents.
struct Asset {
    name: &'static str,
    mime: &'static str,
    body: &'static str,
}

const ASSETS: &[Asset] = &[
    Asset {
        name: "chat.js",
        mime: "text/javascript; charset=utf-8",
        body: include_str!("../../web/chat.js"),
    },
    Asset {
        name: "board.js",
        mime: "text/javascript; charset=utf-8",
        body: include_str!("../../web/board.js"),
    },
    Asset {
        name: "lecture.js",
        mime: "text/javascript; charset=utf-8",
        body: include_str!("../../web/lecture.js"),
    },
    Asset {
        name: "common.js",
        mime: "text/javascript; charset=utf-8",
        body: include_str!("../../web/common.js"),
    },
    Asset {
        name: "chat.css",
        mime: "text/css; charset=utf-8",
        body: include_str!("../../web/chat.css"),
    },
    Asset {
        name: "board.css",
        mime: "text/css; charset=utf-8",
        body: include_str!("../../web/board.css"),
    },
    Asset {
        name: "icon.svg",
        mime: "image/svg+xml",
        body: include_str!("../../web/icon.svg"),
    },
];

const CHAT_HTML: &str = include_str!("../../web/index.html");
const BOARD_HTML: &str = include_str!("../../web/board.html");
const LECTURE_PARTS: &str = include_str!("../../web/lecture.html");

/// The board with each `<!--part:NAME-->...<!--/part-->` of `parts` in
/// place of the board's part of the same name. None if a part is missing.
fn splice(board: &str, parts: &str) -> Option<String> {
    const END: &str = "<!--/part-->";
    let mut page = board.to_string();
    let mut rest = parts;
    while let Some(at) = rest.find("<!--part:") {
        let part = &rest[at..];
        let whole = &part[..part.find(END)? + END.len()];
        let name = &whole[..whole.find("-->")? + 3];
        let start = page.find(name)?;
        let end = start + page[start..].find(END)? + END.len();
        page.replace_range(start..end, whole);
        rest = &part[whole.len()..];
    }
    Some(page)
}

/// `vivachat replay`'s page, built once from the board's.
static LECTURE_HTML: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    splice(BOARD_HTML, LECTURE_PARTS).expect("every part of web/lecture.html is in web/board.html")
});

#[cfg(test)]
/// Bytes of every page, script, style and icon together (the page-weight budget is 200 KB).
pub fn page_weight() -> usize {
    CHAT_HTML.len()
        + BOARD_HTML.len()
        + LECTURE_PARTS.len()
        + ASSETS.iter().map(|a| a.body.len()).sum::<usize>()
}

fn page(mime: &'static str, body: impl Into<axum::body::Body>) -> Response {
    let mut response = (StatusCode::OK, body.into()).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(mime));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // Small files, embedded in the binary: revalidating costs little and an
    // upgraded server is never shown with last version's script.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// `GET /`: the chat page.
pub(crate) async fn chat() -> Response {
    page("text/html; charset=utf-8", CHAT_HTML)
}

/// `GET /board`: the projector's page. It holds no data itself (the feed
/// does), but answers under the feed's rule so a refusal is seen at once.
pub(crate) async fn board(
    State(hub): State<Arc<Hub>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
) -> Response {
    // With an admin token, the page itself asks for it and sends it with the feed.
    if hub.config.admin_token.is_none() {
        if let Err(refused) = hub.site.may_see_everything(&peer.addr, &headers) {
            return refused.into_response();
        }
    } else if let Err(refused) = hub.site.check_host(&headers) {
        return refused.into_response();
    }
    page("text/html; charset=utf-8", BOARD_HTML)
}

/// `vivachat replay`'s `/` and `/board`: the board in lecture mode.
pub(crate) async fn lecture() -> Response {
    page("text/html; charset=utf-8", LECTURE_HTML.as_str())
}

/// `GET /assets/{name}`.
pub(crate) async fn asset(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|a| a.name == name) {
        Some(a) => page(a.mime, a.body),
        None => (StatusCode::NOT_FOUND, "no such asset\n").into_response(),
    }
}

/// `GET /join.svg`: the QR code of the join URL, shown on the board.
pub(crate) async fn join_qr(State(hub): State<Arc<Hub>>) -> Response {
    match super::site::qr_svg(&hub.site.join_url) {
        Some(svg) => page("image/svg+xml", svg),
        None => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "join URL too long for a QR code\n",
        )
            .into_response(),
    }
}

/// `GET /names/{user}`: is the name claimed? The chat page asks
/// before connecting, because a browser is never shown why an upgrade was
/// refused. It reveals nothing an upgrade attempt would not.
pub(crate) async fn name_status(State(hub): State<Arc<Hub>>, Path(raw): Path<String>) -> Response {
    let (status, body) = match Name::parse(&raw) {
        Ok(user) => (
            StatusCode::OK,
            serde_json::json!({ "name": user, "claimed": hub.gate.is_claimed_anywhere(&user).await }),
        ),
        Err(e) => (
            StatusCode::BAD_REQUEST,
            serde_json::json!({ "name": raw, "error": e.to_string() }),
        ),
    };
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_page_and_asset_together_stay_under_200_kb() {
        assert!(page_weight() < 200_000, "{} bytes", page_weight());
    }

    #[test]
    fn the_lecture_page_is_the_board_with_its_live_parts_replaced() {
        let page = LECTURE_HTML.as_str();
        for part in ["head", "top", "events"] {
            assert_eq!(
                page.matches(&format!("<!--part:{part}-->")).count(),
                1,
                "{part}"
            );
        }
        assert!(page.contains(r#"<script type="module" src="/assets/lecture.js">"#));
        assert!(!page.contains("/assets/board.js"), "lecture.js imports it");
        assert!(!page.contains("admin-token") && !page.contains("join.svg"));
        assert!(page.contains(r#"aria-label="This step""#));
        // The five regions come from the board, once.
        for structure in crate::core::Structure::ALL {
            let label = format!(r#"aria-label="{}""#, structure.name());
            assert_eq!(page.matches(&label).count(), 1, "{label}");
        }
        assert_eq!(
            splice("<!--part:x-->a<!--/part-->", "<!--part:y-->b<!--/part-->"),
            None
        );
    }

    #[test]
    fn the_pages_load_only_assets_that_exist() {
        for html in [CHAT_HTML, BOARD_HTML] {
            for (i, _) in html.match_indices("/assets/") {
                let rest = &html[i + "/assets/".len()..];
                let name = &rest[..rest.find('"').unwrap()];
                assert!(ASSETS.iter().any(|a| a.name == name), "{name}");
            }
            // No inline script or style: the CSP would block them.
            assert!(!html.contains("<script>") && !html.contains("style="));
        }
    }
}
