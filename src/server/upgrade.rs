//! The WebSocket opening handshake (RFC 6455 §4.2), done here instead of by
//! axum's extractor for one reason: the connection must be a tokio-tungstenite
//! stream over [`LeanIo`], so that the writer can send a long frame in
//! fragments and an idle connection holds no write buffer (`socket.rs`).
//!
//! The checks, their order, and the status and words of each refusal are
//! those axum's `WebSocketUpgrade` gives, so a client sees no difference.

use std::future::Future;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use super::socket::{LeanIo, Socket};

/// A request that may become a WebSocket: its key, and hyper's handle on the
/// connection once the 101 has gone out.
pub(crate) struct Upgrade {
    key: HeaderValue,
    on_upgrade: OnUpgrade,
}

/// Why a request to `/ws/{user}` cannot be upgraded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum NotAnUpgrade {
    #[error("Request method must be `GET`")]
    MethodNotGet,
    #[error("Connection header did not include 'upgrade'")]
    NoConnectionUpgrade,
    #[error("`Upgrade` header did not include 'websocket'")]
    NoUpgradeWebsocket,
    #[error("`Sec-WebSocket-Key` header missing")]
    NoKey,
    #[error("`Sec-WebSocket-Version` header did not include '13'")]
    NotVersion13,
    #[error("WebSocket request couldn't be upgraded since no upgrade state was present")]
    NotUpgradable,
}

impl IntoResponse for NotAnUpgrade {
    fn into_response(self) -> Response {
        let status = match self {
            NotAnUpgrade::MethodNotGet => StatusCode::METHOD_NOT_ALLOWED,
            NotAnUpgrade::NotUpgradable => StatusCode::UPGRADE_REQUIRED,
            _ => StatusCode::BAD_REQUEST,
        };
        (status, self.to_string()).into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = NotAnUpgrade;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, NotAnUpgrade> {
        if parts.method != Method::GET {
            return Err(NotAnUpgrade::MethodNotGet);
        }
        if !header_contains(&parts.headers, header::CONNECTION, "upgrade") {
            return Err(NotAnUpgrade::NoConnectionUpgrade);
        }
        if !header_is(&parts.headers, header::UPGRADE, "websocket") {
            return Err(NotAnUpgrade::NoUpgradeWebsocket);
        }
        let key = parts
            .headers
            .get(header::SEC_WEBSOCKET_KEY)
            .ok_or(NotAnUpgrade::NoKey)?
            .clone();
        if !header_is(&parts.headers, header::SEC_WEBSOCKET_VERSION, "13") {
            return Err(NotAnUpgrade::NotVersion13);
        }
        let on_upgrade = parts
            .extensions
            .remove::<OnUpgrade>()
            .ok_or(NotAnUpgrade::NotUpgradable)?;
        Ok(Upgrade { key, on_upgrade })
    }
}

impl Upgrade {
    /// Answers 101 Switching Protocols and, once hyper hands the connection
    /// over, runs `serve` on it. If the upgrade never completes (the client
    /// left after the 101), `serve` is dropped unrun.
    pub(crate) fn accept<F, Fut>(self, config: WebSocketConfig, serve: F) -> Response
    where
        F: FnOnce(Socket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let on_upgrade = self.on_upgrade;
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            let io = LeanIo::new(TokioIo::new(upgraded));
            let socket = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
            serve(socket).await;
        });
        let accept = derive_accept_key(self.key.as_bytes());
        (
            StatusCode::SWITCHING_PROTOCOLS,
            [
                (header::CONNECTION, HeaderValue::from_static("upgrade")),
                (header::UPGRADE, HeaderValue::from_static("websocket")),
                (
                    header::SEC_WEBSOCKET_ACCEPT,
                    HeaderValue::from_str(&accept).expect("base64 is a valid header value"),
                ),
            ],
        )
            .into_response()
    }
}

fn header_is(headers: &HeaderMap, name: HeaderName, value: &str) -> bool {
    headers
        .get(name)
        .is_some_and(|h| h.as_bytes().eq_ignore_ascii_case(value.as_bytes()))
}

/// `Connection: keep-alive, Upgrade` counts: the header is a list.
fn header_contains(headers: &HeaderMap, name: HeaderName, value: &str) -> bool {
    headers
        .get(name)
        .and_then(|h| h.to_str().ok())
        .is_some_and(|h| h.to_ascii_lowercase().contains(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accept_key_is_rfc_6455s_example() {
        // RFC 6455 §1.3: this key must be answered with this accept value.
        assert_eq!(
            derive_accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn refusals_keep_axums_statuses() {
        let status = |r: NotAnUpgrade| r.into_response().status();
        assert_eq!(
            status(NotAnUpgrade::MethodNotGet),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            status(NotAnUpgrade::NotUpgradable),
            StatusCode::UPGRADE_REQUIRED
        );
        assert_eq!(status(NotAnUpgrade::NoKey), StatusCode::BAD_REQUEST);
    }
}
