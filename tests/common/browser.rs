//! A real headless Chromium, driven over the Chrome DevTools Protocol (CDP).
//!
//! Why CDP by hand rather than chromiumoxide, fantoccini or Playwright: it
//! needs only the WebSocket and JSON crates the project already has (no
//! chromedriver, no Node, no thousands of generated types to compile), and
//! CDP gives what WebDriver does not: every network request a page makes
//! (to prove nothing leaves the server), its console and exceptions, the
//! accessibility tree (so elements are found by role and label, as a screen
//! reader and an independent checker find them), and screenshots.
//!
//! Every call is bounded by a timeout; the browser is killed when dropped.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Longest wait for any one thing a page should do.
pub const PAGE_WAIT: Duration = Duration::from_secs(15);

/// Reads `probe` every 50 ms until `done` holds, and returns what it read;
/// after [`PAGE_WAIT`] fails with `why` of the last reading. Every wait on a
/// page is this one loop, so every wait is bounded the same way.
pub async fn poll<T, F: std::future::Future<Output = T>>(
    mut probe: impl FnMut() -> F,
    done: impl Fn(&T) -> bool,
    why: impl Fn(&T) -> String,
) -> T {
    let deadline = tokio::time::Instant::now() + PAGE_WAIT;
    loop {
        let now = probe().await;
        if done(&now) {
            return now;
        }
        assert!(tokio::time::Instant::now() < deadline, "{}", why(&now));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

type Sink = SplitSink<WebSocketStream<MaybeTlsStream<TcpStream>>, Message>;

/// What a page did that a test may assert on: requests, errors, console.
#[derive(Default, Debug)]
pub struct Seen {
    pub requests: Vec<String>,
    pub problems: Vec<String>,
}

struct Inner {
    sink: tokio::sync::Mutex<Sink>,
    next_id: AtomicU64,
    replies: Mutex<HashMap<u64, oneshot::Sender<Value>>>,
    seen: Mutex<HashMap<String, Arc<Mutex<Seen>>>>,
}

pub struct Browser {
    inner: Arc<Inner>,
    child: Child,
    profile: std::path::PathBuf,
}

/// The browser to use: `$CHROMIUM`, else Debian's and the usual names.
fn find_chromium() -> Option<String> {
    if let Ok(path) = std::env::var("CHROMIUM") {
        return std::path::Path::new(&path).exists().then_some(path);
    }
    [
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    ]
    .iter()
    .find(|name| {
        Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .output()
            .is_ok_and(|o| o.status.success())
    })
    .map(|name| name.to_string())
}

impl Browser {
    /// Starts a headless Chromium, or returns None (and says so) when the
    /// machine has none. On CI (`CI` set) a missing browser fails the test.
    pub async fn launch() -> Option<Browser> {
        let Some(binary) = find_chromium() else {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must run the browser tests: install Chromium (apt-get install -y chromium)"
            );
            // Written past the test harness's capture, once, so `cargo test` shows it.
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "browser tests skipped: no Chromium found (apt-get install -y chromium, or set CHROMIUM=/path/to/chromium)"
                );
            });
            return None;
        };
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let profile = std::env::temp_dir().join(format!(
            "vivachat-chromium-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&profile);
        // Flags as the machine's notes advise for a closed network: no
        // background fetches, no sign-in, no component updates, fresh profile.
        let mut child = Command::new(&binary)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--disable-extensions",
                "--mute-audio",
                "--hide-scrollbars",
                "--remote-debugging-port=0",
                "--remote-allow-origins=*",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {binary}: {e}"));
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    let _ = tx.send(url.trim().to_string());
                }
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("Chromium did not print its DevTools address within 30 s");
        let (ws, _) = tokio::time::timeout(PAGE_WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("DevTools connect timed out")
            .expect("DevTools connect failed");
        let (sink, mut stream) = ws.split();
        let inner = Arc::new(Inner {
            sink: tokio::sync::Mutex::new(sink),
            next_id: AtomicU64::new(1),
            replies: Mutex::default(),
            seen: Mutex::default(),
        });
        let reader = inner.clone();
        tokio::spawn(async move {
            while let Some(Ok(Message::Text(text))) = stream.next().await {
                let Ok(v) = serde_json::from_str::<Value>(&text) else {
                    continue;
                };
                if let Some(id) = v["id"].as_u64() {
                    if let Some(reply) = reader.replies.lock().unwrap().remove(&id) {
                        let _ = reply.send(v);
                    }
                } else if let Some(session) = v["sessionId"].as_str() {
                    let seen = reader.seen.lock().unwrap().get(session).cloned();
                    if let Some(seen) = seen {
                        record(&mut seen.lock().unwrap(), &v);
                    }
                }
            }
        });
        Some(Browser {
            inner,
            child,
            profile,
        })
    }

    /// A new window of `width` x `height` CSS pixels; `mobile` emulates a
    /// phone (touch, device scale 3, a mobile viewport). Each page is its own
    /// window, so every one renders (a background tab would get no frames),
    /// and they share storage, as tabs of one browser do.
    pub async fn page(&self, width: u32, height: u32, mobile: bool) -> Page {
        let target = call(
            &self.inner,
            None,
            "Target.createTarget",
            json!({"url": "about:blank", "newWindow": true, "width": width, "height": height}),
        )
        .await;
        let target_id = target["targetId"].as_str().unwrap().to_string();
        let attached = call(
            &self.inner,
            None,
            "Target.attachToTarget",
            json!({"targetId": target_id, "flatten": true}),
        )
        .await;
        let session = attached["sessionId"].as_str().unwrap().to_string();
        let seen = Arc::new(Mutex::new(Seen::default()));
        self.inner
            .seen
            .lock()
            .unwrap()
            .insert(session.clone(), seen.clone());
        let page = Page {
            inner: self.inner.clone(),
            session,
            seen,
        };
        for domain in [
            "Page.enable",
            "Runtime.enable",
            "Network.enable",
            "Log.enable",
            "DOM.enable",
            "Accessibility.enable",
        ] {
            page.call(domain, json!({})).await;
        }
        page.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": if mobile { 3 } else { 1 }, "mobile": mobile}),
        )
        .await;
        if mobile {
            page.call(
                "Emulation.setTouchEmulationEnabled",
                json!({"enabled": true, "maxTouchPoints": 5}),
            )
            .await;
        }
        page
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Notes the events a test asserts on.
fn record(seen: &mut Seen, v: &Value) {
    let p = &v["params"];
    match v["method"].as_str().unwrap_or_default() {
        "Network.requestWillBeSent" => {
            seen.requests
                .push(p["request"]["url"].as_str().unwrap_or_default().to_string());
        }
        "Network.webSocketCreated" => {
            seen.requests
                .push(p["url"].as_str().unwrap_or_default().to_string());
        }
        "Runtime.exceptionThrown" => seen.problems.push(format!(
            "exception: {}",
            p["exceptionDetails"]["exception"]["description"]
                .as_str()
                .or(p["exceptionDetails"]["text"].as_str())
                .unwrap_or_default()
        )),
        "Log.entryAdded" if p["entry"]["level"] == "error" => {
            let text = p["entry"]["text"].as_str().unwrap_or_default();
            // A WebSocket the test closed on purpose, or a refused name, is not a page bug.
            if !text.contains("WebSocket") {
                seen.problems.push(format!("console: {text}"));
            }
        }
        "Runtime.consoleAPICalled" if p["type"] == "error" => {
            seen.problems.push(format!("console.error: {}", p["args"]));
        }
        _ => {}
    }
}

async fn call(inner: &Inner, session: Option<&str>, method: &str, params: Value) -> Value {
    let id = inner.next_id.fetch_add(1, Ordering::SeqCst);
    let (tx, rx) = oneshot::channel();
    inner.replies.lock().unwrap().insert(id, tx);
    let mut msg = json!({"id": id, "method": method, "params": params});
    if let Some(s) = session {
        msg["sessionId"] = json!(s);
    }
    inner
        .sink
        .lock()
        .await
        .send(Message::text(msg.to_string()))
        .await
        .expect("DevTools connection lost");
    let reply = tokio::time::timeout(PAGE_WAIT, rx)
        .await
        .unwrap_or_else(|_| panic!("{method} timed out"))
        .expect("DevTools reply dropped");
    if let Some(e) = reply.get("error") {
        panic!("{method} failed: {e}");
    }
    reply["result"].clone()
}

/// One tab.
pub struct Page {
    inner: Arc<Inner>,
    session: String,
    pub seen: Arc<Mutex<Seen>>,
}

/// An element found in the page, held by CDP's object id.
pub struct Element<'p> {
    page: &'p Page,
    object: String,
    pub describe: String,
}

impl Page {
    pub async fn call(&self, method: &str, params: Value) -> Value {
        call(&self.inner, Some(&self.session), method, params).await
    }

    /// Opens `url` and waits until the page and its modules have loaded.
    pub async fn goto(&self, url: &str) {
        self.call("Page.navigate", json!({"url": url})).await;
        self.wait_for("document.readyState === 'complete'", "the page to load")
            .await;
    }

    /// Evaluates `js` (an expression; promises are awaited) and returns its value.
    pub async fn eval(&self, js: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": js, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        if let Some(e) = r.get("exceptionDetails") {
            panic!("{js} threw: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Polls `js` until it is truthy, and returns its value; fails after [`PAGE_WAIT`].
    pub async fn wait_for(&self, js: &str, what: &str) -> Value {
        let deadline = tokio::time::Instant::now() + PAGE_WAIT;
        loop {
            let v = self.eval(js).await;
            if !(v.is_null() || v == json!(false) || v == json!(0) || v == json!("")) {
                return v;
            }
            if tokio::time::Instant::now() > deadline {
                let body = self
                    .eval("document.body ? document.body.innerText : ''")
                    .await;
                panic!("timed out waiting for {what} ({js}); the page shows:\n{body}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The elements with this ARIA role and accessible name, as the
    /// accessibility tree (what a screen reader uses) has them.
    pub async fn all_by_role(&self, role: &str, name: &str) -> Vec<Element<'_>> {
        let doc = self.call("DOM.getDocument", json!({"depth": 0})).await;
        let root = doc["root"]["backendNodeId"].clone();
        let found = self
            .call(
                "Accessibility.queryAXTree",
                json!({"backendNodeId": root, "accessibleName": name, "role": role}),
            )
            .await;
        let mut elements = Vec::new();
        for node in found["nodes"].as_array().cloned().unwrap_or_default() {
            if node["ignored"] == json!(true) {
                continue;
            }
            let Some(backend) = node["backendDOMNodeId"].as_u64() else {
                continue;
            };
            let resolved = self
                .call("DOM.resolveNode", json!({"backendNodeId": backend}))
                .await;
            if let Some(object) = resolved["object"]["objectId"].as_str() {
                elements.push(Element {
                    page: self,
                    object: object.to_string(),
                    describe: format!("{role} {name:?}"),
                });
            }
        }
        elements
    }

    /// The one visible element with this role and name, waiting for it to appear.
    pub async fn by_role(&self, role: &str, name: &str) -> Element<'_> {
        let deadline = tokio::time::Instant::now() + PAGE_WAIT;
        loop {
            let mut found = self.all_by_role(role, name).await;
            if found.len() == 1 {
                return found.remove(0);
            }
            assert!(
                found.len() < 2,
                "{} elements are {role} {name:?}: labels must be unique",
                found.len()
            );
            if tokio::time::Instant::now() > deadline {
                let body = self.eval("document.body.innerText").await;
                panic!("no {role} named {name:?} appeared; the page shows:\n{body}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Types `text` into the text box labelled `label`, as a person would.
    pub async fn fill(&self, label: &str, text: &str) {
        let field = self.by_role("textbox", label).await;
        field
            .call("function () { this.focus(); this.select && this.select(); }")
            .await;
        self.call("Input.insertText", json!({"text": text})).await;
    }

    /// Presses Enter in whatever has the focus.
    pub async fn press_enter(&self) {
        for kind in ["keyDown", "keyUp"] {
            self.call(
                "Input.dispatchKeyEvent",
                json!({"type": kind, "key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13, "text": if kind == "keyDown" { "\r" } else { "" }}),
            )
            .await;
        }
    }

    /// Clicks the button named `name`.
    pub async fn click(&self, name: &str) {
        self.by_role("button", name)
            .await
            .call("function () { this.click(); }")
            .await;
    }

    /// Writes a PNG of the viewport to `path`.
    pub async fn screenshot(&self, path: &std::path::Path) {
        let shot = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        std::fs::write(path, png).unwrap();
    }

    pub fn requests(&self) -> Vec<String> {
        self.seen.lock().unwrap().requests.clone()
    }

    pub fn problems(&self) -> Vec<String> {
        self.seen.lock().unwrap().problems.clone()
    }
}

impl Element<'_> {
    /// Calls `function` with the element as `this`; returns its value.
    pub async fn call(&self, function: &str) -> Value {
        let r = self
            .page
            .call(
                "Runtime.callFunctionOn",
                json!({"objectId": self.object, "functionDeclaration": function, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        if let Some(e) = r.get("exceptionDetails") {
            panic!("{} on {}: {e}", function, self.describe);
        }
        r["result"]["value"].clone()
    }

    pub async fn text(&self) -> String {
        self.call("function () { return this.innerText; }")
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}
