//! Fetching `/inspect` over plain HTTP/1.1: one GET, with timeouts.
//!
//! The request is simple enough that a hand-written client is shorter than
//! configuring a general one, and it needs no TLS stack (`inspect` speaks
//! plain HTTP; run it where the server runs, or through an SSH tunnel).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::core::Snapshot;

/// The largest snapshot accepted (100,000 queued messages are about 15 MB).
const MAX_BODY: u64 = 256 * 1024 * 1024;
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

/// GETs the snapshot; `token` is sent as `Authorization: Bearer TOKEN`.
pub async fn fetch(endpoint: &Endpoint, token: Option<&str>) -> Result<Snapshot, FetchError> {
    let url = endpoint.url.clone();
    let unreachable = |cause: String| FetchError::Unreachable {
        url: url.clone(),
        cause,
    };
    let connect = TcpStream::connect((endpoint.host.as_str(), endpoint.port));
    let mut stream = tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| unreachable("no answer within 3 s".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
    let mut request = format!(
        "GET /inspect HTTP/1.1\r\nHost: {}:{}\r\nAccept: application/json\r\nConnection: close\r\n",
        endpoint.host, endpoint.port
    );
    if let Some(token) = token {
        request += &format!("Authorization: Bearer {token}\r\n");
    }
    request += "\r\n";
    let exchange = async {
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        (&mut stream).take(MAX_BODY).read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(READ_TIMEOUT, exchange)
        .await
        .map_err(|_| unreachable("the answer took over 30 s".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
    let (status, body) = parse_response(&raw).map_err(|cause| FetchError::BadSnapshot {
        url: url.clone(),
        cause,
    })?;
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

/// Splits an HTTP/1.1 response into status and body (Content-Length, chunked, or until close).
pub fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("the answer is not HTTP (no end of headers)")?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut body = &raw[end + 4..];
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or("the answer has no HTTP status line")?;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
        if name == "transfer-encoding" && value.eq_ignore_ascii_case("chunked") {
            chunked = true;
        } else if name == "content-length" {
            let len: usize = value.parse().map_err(|_| "bad Content-Length")?;
            body = body
                .get(..len)
                .ok_or("the body is shorter than its Content-Length")?;
        }
    }
    if !chunked {
        return Ok((status, body.to_vec()));
    }
    let mut out = Vec::new();
    loop {
        let line_end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunk")?;
        let size_text = String::from_utf8_lossy(&body[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| "bad chunk size")?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok((status, out));
        }
        out.extend_from_slice(body.get(..size).ok_or("truncated chunk")?);
        body = body.get(size + 2..).ok_or("truncated chunk")?;
    }
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

    #[test]
    fn responses_with_length_chunks_or_close() {
        let plain = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA";
        assert_eq!(parse_response(plain).unwrap(), (200, b"ok".to_vec()));
        let chunked = b"HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked).unwrap(), (403, b"abcde".to_vec()));
        let until_close = b"HTTP/1.0 200 OK\r\n\r\nall of it";
        assert_eq!(parse_response(until_close).unwrap().1, b"all of it");
        assert!(parse_response(b"garbage").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort").is_err());
    }
}
