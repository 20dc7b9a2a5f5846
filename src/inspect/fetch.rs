//! Fetching `/inspect`: one HTTP/1.1 GET with hyper (already in the tree for
//! axum), with timeouts. Plain HTTP only: run `inspect` where the server runs,
//! or through an SSH tunnel.

use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper::client::conn::http1;
use hyper::{header, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::inspection::Inspection;

/// The largest document accepted (100,000 queued messages are about 15 MB).
const MAX_BODY: usize = 256 * 1024 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a snapshot could not be had, each with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot reach {url}: {cause}. Is `vivachat serve` running there?")]
    Unreachable { url: String, cause: String },
    #[error(
        "{url} refused access (403): without --admin-token the server answers /inspect only \
         from its own machine; if it runs with --admin-token, pass the same token with --admin-token"
    )]
    Forbidden { url: String },
    #[error("{url} answered HTTP {status}: {body}")]
    Http {
        url: String,
        status: u16,
        body: String,
    },
    #[error("{url} sent a snapshot this version cannot read ({cause}); are client and server the same version?")]
    BadSnapshot { url: String, cause: String },
    #[error("{0}")]
    BadUrl(String),
}

/// Where to fetch from: host, port and the full `/inspect` URL for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub url: String,
}

impl Endpoint {
    /// Accepts `http://HOST:PORT`, `ws://HOST:PORT` (as printed by `serve`) or
    /// plain `HOST[:PORT]`; the port defaults to vivachat's 8000.
    pub fn parse(raw: &str) -> Result<Endpoint, FetchError> {
        let rest = match raw.split_once("://") {
            Some(("http" | "ws", rest)) => rest,
            Some(("https" | "wss", _)) => {
                return Err(FetchError::BadUrl(format!(
                    "{raw}: inspect speaks plain HTTP only; run it on the server's machine \
                     (or through an SSH tunnel) with --url http://127.0.0.1:PORT"
                )))
            }
            Some((scheme, _)) => {
                return Err(FetchError::BadUrl(format!(
                    "{raw}: unknown scheme {scheme:?}; use http://HOST:PORT"
                )))
            }
            None => raw,
        };
        let authority = rest.split('/').next().unwrap_or_default();
        if authority.is_empty() {
            return Err(FetchError::BadUrl(format!(
                "{raw}: no host; use http://HOST:PORT"
            )));
        }
        let (host, port) = match authority.rsplit_once(':') {
            // "[::1]:8000" or "host:8000"; a bare IPv6 address has more colons.
            Some((h, p)) if !h.is_empty() && (h.ends_with(']') || !h.contains(':')) => {
                let port = p.parse::<u16>().map_err(|_| {
                    FetchError::BadUrl(format!("{raw}: {p:?} is not a port number"))
                })?;
                (h.trim_matches(['[', ']']).to_string(), port)
            }
            _ => (authority.trim_matches(['[', ']']).to_string(), 8000),
        };
        let shown = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.clone()
        };
        Ok(Endpoint {
            url: format!("http://{shown}:{port}/inspect"),
            host,
            port,
        })
    }
}

/// GETs the document; `token` is sent as `Authorization: Bearer TOKEN`.
pub async fn fetch(endpoint: &Endpoint, token: Option<&str>) -> Result<Inspection, FetchError> {
    let url = endpoint.url.clone();
    let unreachable = |cause: String| FetchError::Unreachable {
        url: url.clone(),
        cause,
    };
    let connect = TcpStream::connect((endpoint.host.as_str(), endpoint.port));
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| unreachable("no answer within 3 s".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
    let (status, body) = tokio::time::timeout(READ_TIMEOUT, get(stream, endpoint, token))
        .await
        .map_err(|_| unreachable("the answer took over 30 s".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
    match status {
        200 => serde_json::from_slice(&body).map_err(|e| FetchError::BadSnapshot {
            url,
            cause: e.to_string(),
        }),
        403 => Err(FetchError::Forbidden { url }),
        status => Err(FetchError::Http {
            url,
            status,
            body: String::from_utf8_lossy(&body)
                .trim()
                .chars()
                .take(200)
                .collect(),
        }),
    }
}

/// One HTTP/1.1 GET of `/inspect` over `stream` with hyper: the status and
/// the body (at most [`MAX_BODY`] bytes).
async fn get(
    stream: TcpStream,
    endpoint: &Endpoint,
    token: Option<&str>,
) -> Result<(u16, Bytes), Box<dyn std::error::Error + Send + Sync>> {
    let (mut sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
    let driver = tokio::spawn(connection);
    let host = match endpoint.host.contains(':') {
        true => format!("[{}]:{}", endpoint.host, endpoint.port),
        false => format!("{}:{}", endpoint.host, endpoint.port),
    };
    let mut request = Request::get("/inspect")
        .header(header::HOST, host)
        .header(header::ACCEPT, "application/json");
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let response = sender
        .send_request(request.body(Empty::<Bytes>::new())?)
        .await?;
    let status = response.status().as_u16();
    let body = Limited::new(response.into_body(), MAX_BODY)
        .collect()
        .await?
        .to_bytes();
    driver.abort();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_in_every_form_people_type() {
        let e = |s: &str| Endpoint::parse(s).map(|e| (e.host, e.port, e.url));
        assert_eq!(
            e("http://127.0.0.1:8000").unwrap(),
            (
                "127.0.0.1".into(),
                8000,
                "http://127.0.0.1:8000/inspect".into()
            )
        );
        assert_eq!(e("ws://10.0.0.5:9000/ws/bob").unwrap().1, 9000);
        assert_eq!(
            e("localhost").unwrap(),
            (
                "localhost".into(),
                8000,
                "http://localhost:8000/inspect".into()
            )
        );
        assert_eq!(e("http://[::1]:8001").unwrap().0, "::1");
        assert_eq!(
            e("http://[::1]:8001").unwrap().2,
            "http://[::1]:8001/inspect"
        );
        assert!(
            matches!(e("https://x.ngrok.app"), Err(FetchError::BadUrl(m)) if m.contains("plain HTTP"))
        );
        assert!(e("http://host:99999").is_err());
        assert!(e("ftp://host").is_err());
        assert!(e("http://").is_err());
    }
}
