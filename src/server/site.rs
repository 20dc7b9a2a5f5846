//! The server as a browser sees it: the addresses it answers on, the join URL
//! students open, and the two checks that keep other web sites out.
//!
//! - A WebSocket upgrade from a page of another site (cross-site WebSocket
//!   hijacking) is refused: a browser always sends `Origin`, and it must name
//!   this server (the `Host` the browser asked for), `--public-url`, or an
//!   `--allow-origin`. Programs that send no `Origin` (the terminal client,
//!   scripts) are not browsers and are let through.
//! - `/inspect` and `/board` show every queued message, so they also refuse a
//!   `Host` that is not this machine or one of its addresses: that is what a
//!   DNS-rebinding page (evil.example resolved to 127.0.0.1) would send.

use std::net::{IpAddr, SocketAddr};

use axum::http::{header, HeaderMap, StatusCode};

use qrcode::render::{svg, unicode};
use qrcode::QrCode;

/// The join URL as an SVG QR code for the board: dark on light with its
/// quiet zone, as phone cameras expect.
pub fn qr_svg(url: &str) -> Option<String> {
    let code = QrCode::new(url.as_bytes()).ok()?;
    Some(
        code.render::<svg::Color>()
            .min_dimensions(256, 256)
            .dark_color(svg::Color("#000000"))
            .light_color(svg::Color("#ffffff"))
            .build(),
    )
}

/// The join URL as a QR code in text, two modules per character. With
/// `color` it is painted black on white whatever the terminal's theme;
/// without, light modules are drawn, which reads right on a dark terminal.
pub fn qr_text(url: &str, color: bool) -> Option<String> {
    let code = QrCode::new(url.as_bytes()).ok()?;
    let (dark, light) = if color {
        (unicode::Dense1x2::Dark, unicode::Dense1x2::Light)
    } else {
        (unicode::Dense1x2::Light, unicode::Dense1x2::Dark)
    };
    let text = code
        .render::<unicode::Dense1x2>()
        .dark_color(dark)
        .light_color(light)
        .quiet_zone(true)
        .build();
    if !color {
        return Some(text);
    }
    Some(
        text.lines()
            .map(|line| format!("\x1b[30;47m{line}\x1b[0m"))
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

/// The addresses people can type: with an unspecified host, every interface's.
pub fn connect_addresses(bound: SocketAddr) -> Vec<SocketAddr> {
    if !bound.ip().is_unspecified() {
        return vec![bound];
    }
    let want_v6 = bound.is_ipv6();
    let mut addrs: Vec<SocketAddr> = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .map(|iface| iface.ip())
        // 0.0.0.0 listens on IPv4 only; :: on both on most systems.
        .filter(|ip| want_v6 || ip.is_ipv4())
        .filter(|ip| !matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80))
        .map(|ip| SocketAddr::new(ip, bound.port()))
        .collect();
    addrs.sort_by_key(|a| (a.ip().is_loopback(), a.is_ipv6(), a.ip()));
    addrs.dedup();
    addrs
}

/// What a browser needs to know about this server.
#[derive(Debug, Clone)]
pub struct Site {
    /// Every address the listener answers on (each interface's, for 0.0.0.0).
    local_ips: Vec<IpAddr>,
    /// `--allow-origin` values and the `--public-url` origin, normalised.
    allowed_origins: Vec<String>,
    /// The host of `--public-url`, which also may open `/board`.
    public_host: Option<String>,
    /// The address students open: `--public-url`, else the first LAN address.
    pub join_url: String,
    /// `--admin-token`: with it, `/inspect` and `/board` need it from everyone.
    admin_token: Option<String>,
}

impl Site {
    pub fn new(
        bound: SocketAddr,
        public_url: Option<&str>,
        allow_origins: &[String],
        admin_token: Option<String>,
    ) -> Site {
        let addrs = connect_addresses(bound);
        let mut local_ips: Vec<IpAddr> = addrs.iter().map(SocketAddr::ip).collect();
        local_ips.push(bound.ip());
        let public = public_url.and_then(origin_of);
        let join_url = match public_url {
            Some(url) => url.to_string(),
            // Sorted LAN first: the address a phone in the room can reach.
            None => match addrs.first() {
                Some(addr) if !addr.ip().is_unspecified() => format!("http://{addr}/"),
                _ => format!("http://{bound}/"),
            },
        };
        let mut allowed_origins: Vec<String> =
            allow_origins.iter().filter_map(|o| origin_of(o)).collect();
        allowed_origins.extend(public.clone());
        Site {
            local_ips,
            allowed_origins,
            public_host: public.as_deref().and_then(authority).map(host_part),
            join_url,
            admin_token,
        }
    }

    /// Whether a WebSocket upgrade with this `Origin` (None: not a browser)
    /// may proceed, for a request that named `host`. Err says why not.
    pub fn check_origin(&self, origin: Option<&str>, host: Option<&str>) -> Result<(), String> {
        let Some(raw) = origin else { return Ok(()) };
        let origin = origin_of(raw);
        let same_site = match (origin.as_deref().and_then(authority), host) {
            (Some(from), Some(host)) => from.eq_ignore_ascii_case(host.trim()),
            _ => false,
        };
        if same_site
            || origin
                .as_ref()
                .is_some_and(|o| self.allowed_origins.contains(o))
        {
            return Ok(());
        }
        Err(format!(
            "a page from {raw:?} may not open a chat connection here (it is not this server, {}); \
             if that site is yours, start the server with --allow-origin {raw}",
            host.unwrap_or("no Host")
        ))
    }

    /// Whether `Host` names this machine: a loopback name or address, an
    /// address the server listens on, or the `--public-url` host. A request
    /// without `Host` is not from a browser, so rebinding does not apply.
    pub fn host_is_local(&self, host: Option<&str>) -> bool {
        let Some(host) = host else { return true };
        let name = host_part(host.trim());
        if name == "localhost" || name.ends_with(".localhost") {
            return true;
        }
        if self.public_host.as_deref() == Some(name.as_str()) {
            return true;
        }
        match name
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            Ok(ip) => {
                let ip = ip.to_canonical();
                ip.is_loopback() || self.local_ips.iter().any(|l| l.to_canonical() == ip)
            }
            Err(_) => false,
        }
    }
}

/// `scheme://host[:port]` of a URL or origin, lower-cased, or None if it has none.
fn origin_of(url: &str) -> Option<String> {
    let url = url.trim().to_ascii_lowercase();
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if scheme.is_empty() || authority.is_empty() {
        return None;
    }
    Some(format!("{scheme}://{authority}"))
}

/// The `host[:port]` of an origin.
fn authority(origin: &str) -> Option<&str> {
    origin.split_once("://").map(|(_, a)| a)
}

/// The host of `host[:port]` or `[v6]:port`, lower-cased, without the port.
fn host_part(authority: &str) -> String {
    let a = authority.to_ascii_lowercase();
    if let Some(rest) = a.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((v6, _)) => format!("[{v6}]"),
            None => a,
        };
    }
    match a.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host.to_string(),
        _ => a,
    }
}

/// Compares without an early exit, so response time does not reveal how many
/// leading bytes of a guessed token were right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Headers a reverse proxy or tunnel adds: a request carrying one came from
/// somewhere else, even though it reaches us from the proxy on loopback.
const FORWARDED_HEADERS: [&str; 5] = [
    "forwarded",
    "x-forwarded-for",
    "x-real-ip",
    "cf-connecting-ip",
    "true-client-ip",
];

/// Without `--admin-token`: this machine only, and not through a proxy or
/// tunnel (whose agent connects from loopback on behalf of the whole internet).
/// With it: the Bearer token from everyone, loopback included, since other
/// users of a shared machine, and tunnels that add no header, are loopback too.
fn may_inspect(admin_token: Option<&str>, remote: &SocketAddr, headers: &HeaderMap) -> bool {
    match admin_token {
        None => {
            remote.ip().to_canonical().is_loopback()
                && !FORWARDED_HEADERS.iter().any(|h| headers.contains_key(*h))
        }
        Some(token) => headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|given| constant_time_eq(given.trim().as_bytes(), token.as_bytes())),
    }
}

/// A refusal: its status and one line saying why and what to do.
pub type Refusal = (StatusCode, String);

impl Site {
    /// Refuses a `Host` that is not this machine's (DNS rebinding, above).
    pub fn check_host(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
        if self.host_is_local(host) {
            return Ok(());
        }
        Err((
        StatusCode::FORBIDDEN,
        format!(
            "/inspect and /board answer only to this machine's names and addresses, not {:?}; \
             open them as http://127.0.0.1:PORT/board (or pass --public-url with the address you use)\n",
            host.unwrap_or_default()
        ),
    ))
    }

    /// The rule of `/inspect`, `/board` and its feed, which show every queued
    /// message: a local `Host`, then loopback or the admin token.
    pub fn may_see_everything(
        &self,
        remote: &SocketAddr,
        headers: &HeaderMap,
    ) -> Result<(), Refusal> {
        self.check_host(headers)?;
        if may_inspect(self.admin_token.as_deref(), remote, headers) {
            return Ok(());
        }
        Err((
        StatusCode::FORBIDDEN,
        "/inspect and /board show every queued message: without --admin-token they answer only \
         this machine (not through a proxy or tunnel); with --admin-token TOKEN they need \
         'Authorization: Bearer TOKEN' (vivachat inspect --admin-token TOKEN; the board asks for it)\n"
            .to_string(),
    ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lan_site() -> Site {
        // As if bound to 0.0.0.0 on a machine whose LAN address is 192.168.1.20.
        Site {
            local_ips: vec!["192.168.1.20".parse().unwrap(), "0.0.0.0".parse().unwrap()],
            allowed_origins: vec!["https://class.example".into()],
            public_host: Some("chat.example.org".into()),
            join_url: "http://192.168.1.20:8000/".into(),
            admin_token: None,
        }
    }

    fn headers(auth: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(a) = auth {
            h.insert(header::AUTHORIZATION, a.parse().unwrap());
        }
        h
    }

    #[test]
    fn an_upgrade_from_this_server_s_own_page_passes_in_every_host_form() {
        let site = lan_site();
        for (origin, host) in [
            ("http://localhost:8000", "localhost:8000"),
            ("http://127.0.0.1:8000", "127.0.0.1:8000"),
            ("http://192.168.1.20:8000", "192.168.1.20:8000"),
            ("https://abc.trycloudflare.com", "abc.trycloudflare.com"),
            ("http://[::1]:8000", "[::1]:8000"),
            ("HTTP://LocalHost:8000", "localhost:8000"),
        ] {
            assert_eq!(
                site.check_origin(Some(origin), Some(host)),
                Ok(()),
                "{origin}"
            );
        }
        // Not a browser: no Origin at all.
        assert_eq!(site.check_origin(None, Some("127.0.0.1:8000")), Ok(()));
        assert_eq!(site.check_origin(None, None), Ok(()));
    }

    #[test]
    fn an_upgrade_from_another_site_is_refused_unless_allowed() {
        let site = lan_site();
        for origin in [
            "http://evil.example",
            "http://localhost:9999",
            "null",
            "http://127.0.0.1",
            "",
        ] {
            let refused = site.check_origin(Some(origin), Some("127.0.0.1:8000"));
            assert!(refused.is_err(), "{origin}");
        }
        let why = site
            .check_origin(Some("http://evil.example"), Some("127.0.0.1:8000"))
            .unwrap_err();
        assert!(why.contains("--allow-origin http://evil.example"), "{why}");
        // --allow-origin and --public-url let theirs through.
        let ok = |o| site.check_origin(Some(o), Some("127.0.0.1:8000"));
        assert_eq!(ok("https://class.example"), Ok(()));
        assert_eq!(ok("https://class.example/"), Ok(()));
        assert!(ok("https://class.example.evil").is_err());
        assert!(site.check_origin(Some("http://x"), None).is_err());
    }

    #[test]
    fn only_this_machine_s_names_may_open_the_board() {
        let site = lan_site();
        for host in [
            "localhost",
            "localhost:8000",
            "app.localhost:8000",
            "127.0.0.1:8000",
            "127.3.4.5",
            "[::1]:8000",
            "192.168.1.20:8000",
            "chat.example.org",
            "CHAT.example.org:443",
        ] {
            assert!(site.host_is_local(Some(host)), "{host}");
        }
        for host in [
            "evil.example:8000",
            "192.168.1.21:8000",
            "localhost.evil.example",
            "10.0.0.1",
            "",
        ] {
            assert!(!site.host_is_local(Some(host)), "{host}");
        }
        assert!(site.host_is_local(None));
    }

    #[test]
    fn the_join_url_prefers_the_public_url_then_the_lan() {
        let loopback: SocketAddr = "127.0.0.1:8000".parse().unwrap();
        assert_eq!(
            Site::new(loopback, None, &[], None).join_url,
            "http://127.0.0.1:8000/"
        );
        let public = Site::new(loopback, Some("https://chat.example.org/"), &[], None);
        assert_eq!(public.join_url, "https://chat.example.org/");
        assert!(public.host_is_local(Some("chat.example.org")));
        assert_eq!(
            public.check_origin(Some("https://chat.example.org"), Some("127.0.0.1:8000")),
            Ok(())
        );
    }

    #[test]
    fn the_join_qr_code_renders_as_svg_and_text() {
        let url = "http://192.168.1.20:8000/";
        let svg = qr_svg(url).unwrap();
        assert!(svg.contains("<svg") && svg.contains("#000000"));
        let plain = qr_text(url, false).unwrap();
        let lines: Vec<&str> = plain.lines().collect();
        // A version-2 code is 25 modules plus a 4-module quiet zone each side,
        // two rows per line.
        assert_eq!(lines[0].chars().count(), 33);
        assert_eq!(lines.len(), 17);
        assert!(qr_text(url, true).unwrap().starts_with("\x1b[30;47m"));
    }

    #[test]
    fn origins_and_hosts_are_normalised() {
        assert_eq!(
            origin_of("https://A.b:8443/path?q"),
            Some("https://a.b:8443".into())
        );
        assert_eq!(origin_of("no scheme"), None);
        assert_eq!(host_part("[::1]:8000"), "[::1]");
        assert_eq!(host_part("Example.COM:80"), "example.com");
        assert_eq!(host_part("example.com"), "example.com");
    }

    #[test]
    fn inspect_is_loopback_only_or_needs_the_token_from_everyone() {
        let open = None;
        let with_token = Some("s3cret");
        let lan: SocketAddr = "192.168.1.20:5000".parse().unwrap();
        let v4_loop: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let v6_loop: SocketAddr = "[::1]:5000".parse().unwrap();
        let mapped_loop: SocketAddr = "[::ffff:127.0.0.1]:5000".parse().unwrap();
        for addr in [v4_loop, v6_loop, mapped_loop] {
            assert!(may_inspect(open, &addr, &headers(None)), "{addr}");
            // With a token set, loopback needs it too.
            assert!(!may_inspect(with_token, &addr, &headers(None)), "{addr}");
            assert!(may_inspect(
                with_token,
                &addr,
                &headers(Some("Bearer s3cret"))
            ));
        }
        assert!(!may_inspect(open, &lan, &headers(Some("Bearer s3cret"))));
        assert!(!may_inspect(with_token, &lan, &headers(None)));
        assert!(!may_inspect(
            with_token,
            &lan,
            &headers(Some("Bearer wrong"))
        ));
        assert!(!may_inspect(with_token, &lan, &headers(Some("s3cret"))));
        assert!(!may_inspect(
            with_token,
            &lan,
            &headers(Some("Bearer s3cre"))
        ));
        assert!(may_inspect(
            with_token,
            &lan,
            &headers(Some("Bearer s3cret"))
        ));
    }

    #[test]
    fn a_request_through_a_proxy_or_tunnel_is_not_local() {
        let open = None;
        let v4_loop: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        for name in FORWARDED_HEADERS {
            let mut h = HeaderMap::new();
            h.insert(name, "203.0.113.9".parse().unwrap());
            assert!(!may_inspect(open, &v4_loop, &h), "{name}");
        }
    }

    #[test]
    fn constant_time_eq_is_plain_equality() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }
}
