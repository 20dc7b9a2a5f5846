//! The chat page and the board in a real headless Chromium, against a real
//! server on a loopback port. Elements are found by role and label, as a
//! screen reader (and an independent checker) finds them.
//!
//! Without Chromium these tests print that they were skipped; with `CI` set
//! a missing browser fails them (`.ci/run` installs Debian's `chromium`).

#[path = "common/browser.rs"]
mod browser;
mod common;

use std::time::Duration;

use browser::{poll, Browser, Page};
use common::TestServer;
use serde_json::{json, Value};
use vivachat::server::Config;

/// A phone: the issue's smallest supported screen.
const PHONE: (u32, u32) = (390, 844);
const LAPTOP: (u32, u32) = (1280, 800);
const PROJECTOR: (u32, u32) = (1280, 720);

fn base(server: &TestServer) -> String {
    format!("http://{}", server.addr)
}

/// Opens the chat page at `origin` and joins as `name`; returns when connected.
async fn join_at(page: &Page, origin: &str, name: &str) {
    page.goto(&format!("{origin}/")).await;
    page.fill("Your name", name).await;
    page.click("Join").await;
    page.by_role("textbox", "Message").await;
    wait_log(page, &format!("Connected as {name}")).await;
}

async fn join(page: &Page, server: &TestServer, name: &str) {
    join_at(page, &base(server), name).await;
}

/// Waits until the Messages log shows `needle`; returns the log's text.
async fn wait_log(page: &Page, needle: &str) -> String {
    let log = page.by_role("log", "Messages").await;
    poll(
        || log.text(),
        |text| text.contains(needle),
        |text| format!("the log never showed {needle:?}; it shows:\n{text}"),
    )
    .await
}

/// Waits until the status of the page's own message containing `text` reads
/// `wanted`, and returns it. A status moves on ("delivered", then "✓✓
/// received" once the recipient's page confirms), so a test waits for the
/// one it can end on, never for a word that may already have been replaced.
async fn wait_status(page: &Page, text: &str, wanted: &str) -> String {
    let js = format!(
        "(() => {{ const e = [...document.querySelectorAll('[role=log] .entry.mine')].find(e => e.textContent.includes({text:?})); \
         const s = e && e.querySelector('.status'); return s ? s.textContent : ''; }})()"
    );
    poll(
        || async { page.eval(&js).await.as_str().unwrap_or_default().to_owned() },
        |status| status.contains(wanted),
        |status| format!("the status of {text:?} never read {wanted:?}; it reads {status:?}"),
    )
    .await
}

/// Sends `text` from the page: To, Message, then Enter (or the Send button).
async fn say(page: &Page, to: &str, text: &str, with_button: bool) {
    page.fill("To", to).await;
    page.fill("Message", text).await;
    if with_button {
        page.click("Send").await;
    } else {
        page.press_enter().await;
    }
}

/// The items of the list labelled Online, as text.
async fn online(page: &Page) -> Vec<String> {
    let list = page.by_role("list", "Online").await;
    let items = list
        .call("function () { return [...this.querySelectorAll('li')].map(li => li.innerText.trim()); }")
        .await;
    serde_json::from_value(items).unwrap()
}

async fn wait_online(page: &Page, what: &str, check: impl Fn(&[String]) -> bool) -> Vec<String> {
    poll(
        || online(page),
        |now| check(now),
        |now| format!("Online never showed {what}: {now:?}"),
    )
    .await
}

fn assert_no_problems(page: &Page, what: &str) {
    let problems = page.problems();
    assert!(problems.is_empty(), "{what}: {problems:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pages_chat_directly_and_in_a_group() {
    let Some(browser) = Browser::launch().await else {
        return;
    };
    let server = TestServer::start().await;
    let alice = browser.page(LAPTOP.0, LAPTOP.1, false).await;
    let bob = browser.page(PHONE.0, PHONE.1, true).await;
    join(&alice, &server, "alice").await;
    join(&bob, &server, "bob").await;

    // Direct: Enter sends; bob sees it, alice sees it delivered.
    say(&alice, "bob", "hello bob", false).await;
    let bob_log = wait_log(&bob, "hello bob").await;
    assert!(bob_log.contains("alice → you"), "{bob_log}");
    assert!(!bob_log.contains("while you were offline"), "{bob_log}");
    // bob's page confirms what it showed, so "delivered" soon becomes the
    // second tick: the tick is the state that stays.
    wait_status(&alice, "hello bob", "✓✓ received").await;

    // Group: both join with the slash command, alice sends with the button.
    for page in [&alice, &bob] {
        page.fill("Message", "/join g1").await;
        page.press_enter().await;
        wait_log(page, "You joined #g1").await;
    }
    say(&alice, "#g1", "lab at three", true).await;
    let bob_log = wait_log(&bob, "lab at three").await;
    assert!(bob_log.contains("#g1 · alice"), "{bob_log}");
    // And back the other way, with the one-off #group form.
    bob.fill("Message", "#g1 see you there").await;
    bob.press_enter().await;
    wait_log(&alice, "see you there").await;

    // Errors are words: a group alice is not in.
    say(&alice, "#nope", "anyone?", false).await;
    wait_log(&alice, "not sent").await;

    let state = server.inspect().await;
    assert_eq!(state["groups"]["g1"], json!(["alice", "bob"]));
    assert_no_problems(&alice, "alice's page");
    assert_no_problems(&bob, "bob's page");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_queued_while_offline_appears_marked_when_they_join() {
    let Some(browser) = Browser::launch().await else {
        return;
    };
    let server = TestServer::start().await;
    let alice = browser.page(LAPTOP.0, LAPTOP.1, false).await;
    join(&alice, &server, "alice").await;
    say(&alice, "carol", "read this when you are back", false).await;
    wait_status(&alice, "read this when you are back", "queued").await;

    let carol = browser.page(PHONE.0, PHONE.1, true).await;
    join(&carol, &server, "carol").await;
    let log = wait_log(&carol, "read this when you are back").await;
    assert!(log.contains("while you were offline"), "{log}");
    assert!(log.contains("1 message(s) waited for you"), "{log}");
    let marked = carol
        .eval("document.querySelectorAll('[role=log] .entry.offline').length")
        .await;
    assert_eq!(marked, json!(1));
    // The page resumes: it confirms what it showed, and only then is it released.
    server
        .wait_for_state("carol's page to confirm", |s| {
            s["offline_messages"] == json!({}) && s["released"]["carol"] == 1
        })
        .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_resumes_after_a_reload_and_shows_the_second_tick() {
    let Some(browser) = Browser::launch().await else {
        return;
    };
    let server = TestServer::start().await;
    let page = browser.page(PHONE.0, PHONE.1, true).await;
    join(&page, &server, "pia").await;
    let mut tom = server.connect("tom").await;
    for text in ["first", "second", "third"] {
        tom.send(json!({"type": "message", "to": "pia", "text": text}))
            .await;
        assert_eq!(tom.recv_skipping_presence().await["status"], "delivered");
    }
    wait_log(&page, "third").await;
    // Shown, then confirmed in one batch: the server holds nothing for her.
    server
        .wait_for_state("pia's page to confirm", |s| {
            s["released"]["pia"] == 3 && s["offline_messages"].get("pia").is_none()
        })
        .await;
    let saved = page
        .eval("JSON.parse(localStorage.getItem('vivachat:resume:pia')).received")
        .await;
    assert_eq!(saved, json!(3));

    // A reload resumes after 3: nothing is shown twice, what is new arrives.
    join(&page, &server, "pia").await;
    tom.send(json!({"type": "message", "to": "pia", "text": "fourth"}))
        .await;
    let log = wait_log(&page, "fourth").await;
    assert!(
        !log.contains("third"),
        "nothing re-sent after the reload: {log}"
    );

    // The second tick: bob's client confirms, and the page says so.
    let (mut bob, _) = {
        let mut bob = server.connect_raw("/ws/bob?resume=0").await.unwrap();
        let welcome = bob.recv().await;
        (bob, welcome)
    };
    say(&page, "bob", "did you get this?", false).await;
    let got = bob.recv_skipping_presence().await;
    assert_eq!(got["text"], "did you get this?");
    // bob has not confirmed yet, so "delivered" stays until he does.
    wait_status(&page, "did you get this?", "delivered").await;
    bob.send(json!({"type": "received", "id": got["id"]})).await;
    wait_status(&page, "did you get this?", "✓✓ received").await;
    if let Ok(dir) = std::env::var("VIVACHAT_SCREENSHOTS") {
        page.screenshot(&std::path::Path::new(&dir).join("chat-receipt.png"))
            .await;
    }
    assert_no_problems(&page, "pia's page");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn html_in_a_message_is_shown_literally_and_runs_nothing() {
    let Some(browser) = Browser::launch().await else {
        return;
    };
    let server = TestServer::start().await;
    let alice = browser.page(LAPTOP.0, LAPTOP.1, false).await;
    let bob = browser.page(LAPTOP.0, LAPTOP.1, false).await;
    join(&alice, &server, "alice").await;
    join(&bob, &server, "bob").await;
    let attack =
        r#"<img src=x onerror="window.pwned=1"><b>bold</b><script>window.pwned=2</script>"#;
    say(&alice, "bob", attack, false).await;
    let log = wait_log(&bob, "<b>bold</b>").await;
    assert!(log.contains(attack), "shown literally: {log}");
    // Give an onerror the time it would need, then look.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for page in [&alice, &bob] {
        assert_eq!(page.eval("typeof window.pwned").await, json!("undefined"));
        let tags = page
            .eval("document.querySelectorAll('[role=log] img, [role=log] b, [role=log] script').length")
            .await;
        assert_eq!(tags, json!(0), "no element was made from the text");
        assert!(
            !page.requests().iter().any(|u| u.ends_with("/x")),
            "the image was never fetched: {:?}",
            page.requests()
        );
    }
    // A name is text too, in the online list and the log.
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_presence_list_updates() {
    let Some(browser) = Browser::launch().await else {
        return;
    };
    let server = TestServer::start().await;
    let alice = browser.page(LAPTOP.0, LAPTOP.1, false).await;
    join(&alice, &server, "alice").await;
    assert_eq!(online(&alice).await, ["alice (you)"]);

    // A terminal client joins: its presence frame updates the page's list.
    let dave = server.connect("dave").await;
    wait_online(&alice, "dave", |o| o.iter().any(|i| i == "dave")).await;
    wait_log(&alice, "dave is online").await;

    let bob = browser.page(PHONE.0, PHONE.1, true).await;
    join(&bob, &server, "bob").await;
    let seen_by_bob = online(&bob).await;
    assert_eq!(seen_by_bob, ["alice", "bob (you)", "dave"]);
    wait_online(&alice, "bob", |o| o.len() == 3).await;

    // bob leaves with the button; dave's socket closes.
    bob.click("Leave").await;
    dave.close().await;
    wait_online(&alice, "only alice", |o| o == ["alice (you)"]).await;
    wait_log(&alice, "bob went offline").await;
    server.stop().await;
}

/// The text of the board region labelled `name`.
async fn region(page: &Page, name: &str) -> String {
    page.by_role("region", name).await.text().await
}

async fn wait_region(page: &Page, name: &str, what: &str, check: impl Fn(&str) -> bool) -> String {
    poll(
        || region(page, name),
        |text| check(text),
        |text| format!("region {name} never showed {what}; it shows:\n{text}"),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_board_draws_each_structure_and_changes_without_a_reload() {
    let Some(browser) = Browser::launch().await else {
        return;
    };
    let server = TestServer::start().await;
    let board = browser.page(PROJECTOR.0, PROJECTOR.1, false).await;
    board.goto(&format!("{}/board", base(&server))).await;
    board.eval("window.sameDocument = 'yes'").await;
    // The regions are labelled with the seed's names, as the core spells them.
    for name in vivachat::core::Structure::ALL.map(vivachat::core::Structure::name) {
        wait_region(&board, name, "its empty state", |t| t.contains("empty")).await;
    }

    let mut alice = server.connect("alice").await;
    let _alice_phone = server.connect("alice").await;
    wait_region(&board, "presence", "alice", |t| t.contains("alice")).await;
    let conns = wait_region(&board, "active_connections", "two device chips", |t| {
        t.matches('#').count() == 2
    })
    .await;
    assert!(conns.contains("alice"), "{conns}");

    // Three messages to an offline user: three boxes, front to back, in order.
    for text in ["one", "two", "three"] {
        alice
            .send(json!({"type": "message", "to": "bob", "text": text}))
            .await;
        assert_eq!(alice.recv_skipping_presence().await["status"], "queued");
    }
    let deque = wait_region(&board, "offline_messages", "bob's three boxes", |t| {
        t.contains("len 3")
    })
    .await;
    assert!(
        deque.contains("bob") && deque.contains("front") && deque.contains("back"),
        "{deque}"
    );
    let ids: Vec<u64> = serde_json::from_value(
        board
            .eval("[...document.querySelectorAll('[aria-label=offline_messages] .box b')].map(b => +b.textContent.slice(1))")
            .await,
    )
    .unwrap();
    assert_eq!(ids.len(), 3);
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "oldest at the front: {ids:?}"
    );

    // The last message's path: online? no -> push_back.
    let flow = board
        .wait_for(
            "document.querySelectorAll('[aria-label=\"message flow\"] .step.lit').length >= 3 && document.querySelector('[aria-label=\"message flow\"]').innerText",
            "the flow to light",
        )
        .await;
    let flow = flow.as_str().unwrap().to_string();
    assert!(
        flow.contains("push_back on bob's deque") && flow.contains("queued"),
        "{flow}"
    );

    alice
        .send(json!({"type": "group_join", "group": "g1"}))
        .await;
    alice.recv_skipping_presence().await;
    alice.send(json!({"type": "block", "user": "eve"})).await;
    alice.recv_skipping_presence().await;
    wait_region(&board, "group_members", "#g1", |t| {
        t.contains("#g1") && t.contains("alice")
    })
    .await;
    wait_region(&board, "blocked_users", "alice blocks eve", |t| {
        t.contains("alice") && t.contains("blocks") && t.contains("eve")
    })
    .await;

    // bob connects: the deque is flushed from the front and disappears.
    let _bob = server.connect("bob").await;
    wait_region(&board, "offline_messages", "the deque flushed", |t| {
        t.contains("empty")
    })
    .await;
    let ops = region(&board, "operation counts").await;
    assert!(
        ops.contains("push_back") && ops.contains("pop_front"),
        "{ops}"
    );
    let events = region(&board, "event log").await;
    assert!(events.contains("bob connected"), "{events}");

    // Batched presence: carol's arrival reaches the one batched connection
    // in a tick's diff, which the presence region names. The watcher's
    // welcome first, so the server has it before carol arrives.
    let mut watcher = server
        .connect_raw("/ws/watcher?presence=batched")
        .await
        .unwrap();
    assert_eq!(watcher.recv().await["type"], "welcome");
    let _carol = server.connect("carol").await;
    let diff = wait_region(&board, "presence", "the tick's diff", |t| {
        t.contains("last tick:") && t.contains("+carol")
    })
    .await;
    assert!(diff.contains("one diff, sent to 1 connection"), "{diff}");

    assert_eq!(
        board.eval("window.sameDocument").await,
        json!("yes"),
        "no reload"
    );
    let state = server.inspect().await;
    assert_eq!(state["server"]["board"]["viewers"], 1);
    assert_no_problems(&board, "the board");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_sized_viewport_fits_and_works() {
    let Some(browser) = Browser::launch().await else {
        return;
    };
    let server = TestServer::start().await;
    let phone = browser.page(PHONE.0, PHONE.1, true).await;
    join(&phone, &server, "pat").await;
    // Nothing wider than the screen, and every control inside it.
    let width = phone
        .eval("document.documentElement.scrollWidth")
        .await
        .as_u64()
        .unwrap();
    assert!(
        width <= PHONE.0 as u64,
        "page is {width}px wide on a {}px phone",
        PHONE.0
    );
    for (role, name) in [
        ("textbox", "To"),
        ("textbox", "Message"),
        ("button", "Send"),
        ("log", "Messages"),
    ] {
        let rect = phone
            .by_role(role, name)
            .await
            .call("function () { const r = this.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; }")
            .await;
        let [l, t, r, b]: [f64; 4] = serde_json::from_value(rect).unwrap();
        assert!(
            l >= 0.0 && t >= 0.0 && r <= PHONE.0 as f64 && b <= PHONE.1 as f64 && r > l && b > t,
            "{role} {name} at {l},{t}-{r},{b} is not on a {PHONE:?} screen"
        );
    }
    // Tap targets big enough for a thumb.
    let send_height = phone
        .by_role("button", "Send")
        .await
        .call("function () { return this.getBoundingClientRect().height; }")
        .await;
    assert!(send_height.as_f64().unwrap() >= 44.0, "{send_height}");
    phone.fill("Message", "/help").await;
    phone.press_enter().await;
    wait_log(&phone, "/block bob").await;
    say(&phone, "pat", "note to self", false).await;
    // pat's own page shows it and confirms it: the second tick stays.
    wait_status(&phone, "note to self", "✓✓ received").await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_page_requests_anything_but_the_server_and_it_works_on_every_loopback_name() {
    let Some(browser) = Browser::launch().await else {
        return;
    };
    let server = TestServer::start().await;
    let port = server.addr.port();
    let by_ip = browser.page(LAPTOP.0, LAPTOP.1, false).await;
    let by_name = browser.page(LAPTOP.0, LAPTOP.1, false).await;
    let board = browser.page(PROJECTOR.0, PROJECTOR.1, false).await;
    join_at(&by_ip, &format!("http://127.0.0.1:{port}"), "ip").await;
    join_at(&by_name, &format!("http://localhost:{port}"), "named").await;
    say(&by_name, "ip", "from localhost", false).await;
    wait_log(&by_ip, "from localhost").await;
    board.goto(&format!("http://localhost:{port}/board")).await;
    wait_region(&board, "presence", "both users", |t| {
        t.contains("ip") && t.contains("named")
    })
    .await;
    // The join QR code is an image the board loaded from the server.
    let qr_loaded = board
        .wait_for(
            "document.querySelector('img').naturalWidth > 0",
            "the QR code",
        )
        .await;
    assert_eq!(qr_loaded, json!(true));

    for (page, host) in [
        (&by_ip, format!("127.0.0.1:{port}")),
        (&by_name, format!("localhost:{port}")),
        (&board, format!("localhost:{port}")),
    ] {
        let requests = page.requests();
        assert!(requests.len() >= 4, "{requests:?}");
        for url in &requests {
            let ours = url.starts_with(&format!("http://{host}/"))
                || url.starts_with(&format!("ws://{host}/"))
                || url == "about:blank";
            assert!(ours, "a request left the server: {url} (all: {requests:?})");
        }
        assert_no_problems(page, &host);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claimed_name_is_refused_in_words_and_a_reload_keeps_it() {
    let Some(browser) = Browser::launch().await else {
        return;
    };
    let server = TestServer::start().await;
    let first = browser.page(LAPTOP.0, LAPTOP.1, false).await;
    join(&first, &server, "sam").await;
    let state = server.inspect().await;
    assert_eq!(
        state["server"]["claimed_names"],
        json!(["sam"]),
        "the page claims its name"
    );

    // The same browser (same storage) comes back as sam: its key is kept.
    let again = browser.page(LAPTOP.0, LAPTOP.1, false).await;
    join(&again, &server, "sam").await;

    // A terminal client without the key is refused at the upgrade.
    assert_eq!(server.refused_status("/ws/sam").await, 401);
    // Another browser profile (another student's phone) is told why, in words.
    let Some(other) = Browser::launch().await else {
        return;
    };
    let stranger = other.page(PHONE.0, PHONE.1, true).await;
    stranger.goto(&format!("{}/", base(&server))).await;
    stranger.fill("Your name", "sam").await;
    stranger.click("Join").await;
    let alert = stranger
        .wait_for(
            "document.querySelector('[role=alert]').innerText",
            "the refusal",
        )
        .await;
    assert!(alert.as_str().unwrap().contains("already taken"), "{alert}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_a_restart_and_reconnects_by_itself() {
    let Some(browser) = Browser::launch().await else {
        return;
    };
    let server = TestServer::start().await;
    let addr = server.addr;
    let page = browser.page(PHONE.0, PHONE.1, true).await;
    join(&page, &server, "rosa").await;
    let status = page.by_role("status", "").await;
    assert_eq!(status.text().await, "connected");

    server.stop().await;
    let down = page
        .wait_for(
            "document.querySelector('[role=status]').innerText.includes('retrying')",
            "the page to say it is offline",
        )
        .await;
    assert_eq!(down, json!(true));
    wait_log(&page, "the server is restarting").await;

    // The same address again: the page finds it with its backoff, and chats.
    let server = TestServer::start_at(addr, Config::default()).await;
    page.wait_for(
        "document.querySelector('[role=status]').innerText === 'connected'",
        "the page to reconnect",
    )
    .await;
    let mut tom = server.connect("tom").await;
    tom.send(json!({"type": "message", "to": "rosa", "text": "welcome back"}))
        .await;
    assert_eq!(tom.recv_skipping_presence().await["status"], "delivered");
    wait_log(&page, "welcome back").await;
    // The restarted (in-memory) server forgot the claim; the page claimed it again.
    let state = server.inspect().await;
    assert_eq!(state["server"]["claimed_names"], json!(["rosa"]));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_admin_token_the_board_asks_for_it_once() {
    let Some(browser) = Browser::launch().await else {
        return;
    };
    let server = TestServer::start_with(Config {
        admin_token: Some("front-desk".into()),
        ..Config::default()
    })
    .await;
    let board = browser.page(PROJECTOR.0, PROJECTOR.1, false).await;
    board.goto(&format!("{}/board", base(&server))).await;
    board.fill("Admin token", "wrong").await;
    board.click("Open the board").await;
    let alert = board
        .wait_for(
            "document.querySelector('#admin-error').innerText",
            "the refusal",
        )
        .await;
    assert_eq!(alert, json!("That token was not accepted."));
    board.fill("Admin token", "front-desk").await;
    board.press_enter().await;
    let _alice = server.connect("alice").await;
    wait_region(&board, "presence", "alice", |t| t.contains("alice")).await;
    // Asked once: a reload goes straight to the board.
    board.goto(&format!("{}/board", base(&server))).await;
    wait_region(&board, "presence", "alice again", |t| t.contains("alice")).await;
    let form_hidden = board.eval("document.querySelector('#admin').hidden").await;
    assert_eq!(form_hidden, json!(true));
    server.stop().await;
}

/// A class of 30 as terminal clients: names, groups of 5, some blocks, and a
/// few messages waiting for students who have not arrived yet.
const CLASS: [&str; 30] = [
    "ana", "ben", "chen", "dara", "eli", "femi", "gus", "hana", "ivan", "jo", "kai", "lena", "mo",
    "nia", "oli", "priya", "quinn", "raj", "sara", "tom", "uma", "vik", "wen", "xena", "yusuf",
    "zoe", "amir", "bea", "cruz", "dev",
];

async fn seat_the_class(server: &TestServer) -> Vec<common::Client> {
    let mut class = Vec::new();
    for (i, name) in CLASS.iter().enumerate() {
        let mut c = server.connect(name).await;
        let group = format!("lab{}", i / 10 + 1);
        c.send(json!({"type": "group_join", "group": group})).await;
        c.recv_skipping_presence().await;
        class.push(c);
    }
    class[1].send(json!({"type": "block", "user": "eli"})).await;
    class[1].recv_skipping_presence().await;
    class[7].send(json!({"type": "block", "user": "tom"})).await;
    class[7].recv_skipping_presence().await;
    for (i, (to, text)) in [
        ("omar", "are you coming to the lab?"),
        ("omar", "bring the notes"),
        ("omar", "room 2.14"),
        ("alice", "welcome back!"),
        ("pia", "call me"),
    ]
    .iter()
    .enumerate()
    {
        class[i]
            .send(json!({"type": "message", "to": to, "text": text}))
            .await;
        class[i].recv_skipping_presence().await;
    }
    class
}

/// The projectors a teacher meets, smallest first: 1024x768 is still the
/// most common in classrooms.
const PROJECTORS: [(u32, u32); 4] = [(1024, 768), (1280, 720), (1366, 768), (1920, 1080)];

/// What a person would call cut on the page: the page scrolls, a text ends
/// in an ellipsis, or sticks out of its region or the screen. And the
/// smallest text drawn. Only displayed elements with text of their own count.
const WHAT_IS_CUT: &str = r#"(() => {
  const problems = [];
  const W = innerWidth, H = innerHeight, de = document.documentElement;
  if (de.scrollWidth > W || de.scrollHeight > H) problems.push(`the page scrolls: ${de.scrollWidth}x${de.scrollHeight}`);
  const clipper = (e) => {
    for (let a = e.parentElement; a; a = a.parentElement) {
      const s = getComputedStyle(a);
      if (s.overflowX !== "visible" || s.overflowY !== "visible") return a;
    }
    return null;
  };
  let smallest = Infinity, where = "";
  for (const e of document.querySelectorAll("body *")) {
    if (!e.getClientRects().length) continue;
    const text = [...e.childNodes].filter((n) => n.nodeType === 3).map((n) => n.textContent).join("").trim();
    if (!text) continue;
    const s = getComputedStyle(e);
    const size = parseFloat(s.fontSize);
    if (size < smallest) { smallest = size; where = text.slice(0, 40); }
    const label = `${e.closest("section")?.getAttribute("aria-label") ?? "header"}: "${text.slice(0, 40)}"`;
    if (s.textOverflow === "ellipsis" && e.scrollWidth > e.clientWidth) problems.push(`${label} ends in an ellipsis`);
    const r = e.getBoundingClientRect();
    if (r.right > W + 1 || r.bottom > H + 1 || r.left < -1 || r.top < -1) problems.push(`${label} is off the screen`);
    const box = clipper(e);
    if (box) {
      const b = box.getBoundingClientRect();
      if (r.right > b.right + 1 || r.bottom > b.bottom + 1 || r.left < b.left - 1 || r.top < b.top - 1) problems.push(`${label} is cut by its region`);
    }
  }
  return { problems, smallest, where };
})()"#;

/// A board at `size`, drawn for the class, with its animations over.
async fn board_for_the_class(browser: &Browser, server: &TestServer, size: (u32, u32)) -> Page {
    let board = browser.page(size.0, size.1, false).await;
    board.goto(&format!("{}/board", base(server))).await;
    wait_region(&board, "presence", "the class", |t| t.contains("ana")).await;
    wait_region(&board, "group_members", "the groups", |t| {
        t.contains("#lab1")
    })
    .await;
    wait_region(&board, "offline_messages", "omar's deque", |t| {
        t.contains("omar")
    })
    .await;
    board
        .wait_for(
            "document.getAnimations().length === 0",
            "the animations to end",
        )
        .await;
    board
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_board_fits_every_projector_for_a_class_of_30_with_nothing_cut() {
    let Some(browser) = Browser::launch().await else {
        return;
    };
    let server = TestServer::start().await;
    let _class = seat_the_class(&server).await;
    let mut smallest = Vec::new();
    for size in PROJECTORS {
        let board = board_for_the_class(&browser, &server, size).await;
        let seen = board.eval(WHAT_IS_CUT).await;
        assert_eq!(seen["problems"], json!([]), "at {size:?}");
        let px = seen["smallest"].as_f64().unwrap();
        assert!(
            px >= 14.0,
            "at {size:?} the smallest text is {px} px: {}",
            seen["where"]
        );
        // Whatever did not fit is said, not dropped: the class is all there.
        let presence = region(&board, "presence").await;
        let shown = CLASS
            .iter()
            .filter(|n| presence.split_whitespace().any(|w| w == **n))
            .count();
        let more: usize = presence
            .split("+")
            .nth(1)
            .and_then(|t| t.split_whitespace().next())
            .map_or(0, |n| n.parse().unwrap());
        assert_eq!(shown + more, CLASS.len(), "at {size:?}: {presence}");
        smallest.push(px);
        assert_no_problems(&board, "the board");
    }
    // The type grows with the screen.
    assert!(
        smallest[3] >= smallest[0] * 1.3,
        "type at 1080p {smallest:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_board_opened_mid_class_shows_the_last_message_and_the_events_at_once() {
    let Some(browser) = Browser::launch().await else {
        return;
    };
    // The real binary, narrating as `vivachat serve` does by default.
    let (served, port) = common::Proc::serve(&["--port", "0"]);
    let ws = |user: &str| format!("ws://127.0.0.1:{port}/ws/{user}");
    let (mut alice, _) = tokio_tungstenite::connect_async(ws("alice")).await.unwrap();
    use futures_util::{SinkExt, StreamExt};
    let (mut bob, _) = tokio_tungstenite::connect_async(ws("bob")).await.unwrap();
    // bob is registered once his welcome has come: only then is he online.
    let welcome = tokio::time::timeout(common::WAIT, bob.next())
        .await
        .expect("bob's welcome");
    assert!(welcome
        .unwrap()
        .unwrap()
        .into_text()
        .unwrap()
        .contains("welcome"));
    let message = json!({"type":"message","to":"bob","text":"before the board"}).to_string();
    alice.send(message.into()).await.unwrap();
    let acked = loop {
        let next = tokio::time::timeout(common::WAIT, alice.next()).await;
        let frame = next.expect("an ack in time").unwrap().unwrap();
        let frame = frame.into_text().unwrap().to_string();
        if frame.contains("\"ack\"") {
            break frame;
        }
    };
    assert!(acked.contains("delivered"), "{acked}");
    // Opened now, after the message: its first frame already has it.
    let board = browser.page(PROJECTORS[0].0, PROJECTORS[0].1, false).await;
    board.goto(&format!("http://127.0.0.1:{port}/board")).await;
    board
        .wait_for(
            "window.vivachatBoard.frames >= 1",
            "the board's first frame",
        )
        .await;
    let flow = region(&board, "message flow").await;
    assert!(
        flow.contains("alice → bob"),
        "the last message is not shown: {flow}"
    );
    let events = region(&board, "event log").await;
    assert!(
        events.contains("alice -> bob"),
        "no recent events: {events}"
    );
    drop(served);
}

/// Screenshots for the README (`demos/screenshots.sh`): not a check, so ignored
/// by `cargo test`; it writes under `$VIVACHAT_SCREENSHOTS` (docs/img).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn screenshots() {
    let dir = std::path::PathBuf::from(
        std::env::var("VIVACHAT_SCREENSHOTS").unwrap_or_else(|_| "docs/img".into()),
    );
    std::fs::create_dir_all(&dir).unwrap();
    let browser = Browser::launch().await.expect("screenshots need Chromium");
    let server = TestServer::start_with(Config::default()).await;
    let mut class = seat_the_class(&server).await;
    let board = browser.page(PROJECTOR.0, PROJECTOR.1, false).await;
    board.goto(&format!("{}/board", base(&server))).await;

    let alice = browser.page(PHONE.0, PHONE.1, true).await;
    join(&alice, &server, "alice").await;
    wait_log(&alice, "welcome back!").await;
    class[2]
        .send(json!({"type": "message", "to": "alice", "text": "hi alice, lab at 3?"}))
        .await;
    class[2].recv_skipping_presence().await;
    wait_log(&alice, "lab at 3").await;
    say(&alice, "chen", "yes! see you there", false).await;
    wait_status(&alice, "yes! see you there", "delivered").await;
    alice.fill("Message", "/join lab1").await;
    alice.press_enter().await;
    wait_log(&alice, "You joined #lab1").await;
    class[0]
        .send(json!({"type": "group_message", "group": "lab1", "text": "group notes are up"}))
        .await;
    class[0].recv_skipping_presence().await;
    wait_log(&alice, "group notes are up").await;
    // One student leaves, and a message for them is queued at the back of their deque.
    drop(class.pop());
    class[3]
        .send(json!({"type": "message", "to": "dev", "text": "you left your bag"}))
        .await;
    class[3].recv_skipping_presence().await;
    wait_region(&board, "offline_messages", "dev's deque", |t| {
        t.contains("dev")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(2000)).await;
    alice.screenshot(&dir.join("chat-phone.png")).await;
    board.screenshot(&dir.join("board-projector.png")).await;
    // The board on each projector a teacher meets (docs/img/board-WxH.png).
    for (w, h) in PROJECTORS {
        let sized = board_for_the_class(&browser, &server, (w, h)).await;
        sized
            .screenshot(&dir.join(format!("board-{w}x{h}.png")))
            .await;
    }
    let laptop = browser.page(LAPTOP.0, LAPTOP.1, false).await;
    join(&laptop, &server, "omar").await;
    wait_log(&laptop, "room 2.14").await;
    laptop.screenshot(&dir.join("chat-laptop.png")).await;
    server.stop().await;
}

/// The server's CPU time so far, in seconds, from /proc (Linux).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// One phase of the class-scale measurement: 300 users at 2,000 msgs/s.
async fn class_load(binary: &str, url: &str, pid: u32, secs: u32) -> (serde_json::Value, f64) {
    let before = cpu_seconds(pid);
    let (binary, url) = (binary.to_string(), url.to_string());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(binary)
            .args(["bench", "load", "--url", &url, "--clients", "300"])
            .args(["--rate", "2000", "--secs", &secs.to_string(), "--json"])
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (report, (cpu_seconds(pid) - before) / secs as f64)
}

/// docs/performance.md's board figures: a release server (`cargo test
/// --release`) under 300 users sending 2,000 msgs/s, first with no board
/// open, then with the board open in Chromium. Ignored by `cargo test`:
/// it takes a minute and measures, it does not check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn board_under_a_class_of_300() {
    let browser = Browser::launch().await.expect("needs Chromium");
    let binary = env!("CARGO_BIN_EXE_vivachat");
    let mut server = std::process::Command::new(binary)
        .args(["serve", "--quiet", "--port", "0"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = server.id();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(server.stdout.take().unwrap()));
    let addr = loop {
        let line = lines.next().expect("serve printed no address").unwrap();
        if let Some(rest) = line.trim().strip_prefix("vivachat listening on ") {
            break rest.to_string();
        }
    };
    // Keep reading its output, so the server never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    let url = format!("ws://{addr}");
    let secs = 15;
    let (quiet, quiet_cpu) = class_load(binary, &url, pid, secs).await;

    let board = browser.page(PROJECTOR.0, PROJECTOR.1, false).await;
    board.goto(&format!("http://{addr}/board")).await;
    board
        .wait_for("window.vivachatBoard.frames > 0", "the first frame")
        .await;
    let (watched, watched_cpu) = class_load(binary, &url, pid, secs).await;
    let page = board.eval("window.vivachatBoard").await;
    let (_, inspect) = common::http_get(addr.parse().unwrap(), "/inspect", &[]).await;
    let inspect: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    let feed = &inspect["server"]["board"];

    let frames = page["frames"].as_f64().unwrap();
    println!("| | no board | board open |");
    println!("|---|---|---|");
    println!(
        "| delivered msgs/s | {:.0} | {:.0} |",
        quiet["achieved_rate"].as_f64().unwrap(),
        watched["achieved_rate"].as_f64().unwrap()
    );
    for (what, p) in [("latency p50 (ms)", "p50"), ("latency p99 (ms)", "p99")] {
        println!(
            "| {what} | {:.2} | {:.2} |",
            quiet["latency_us"][p].as_f64().unwrap() / 1000.0,
            watched["latency_us"][p].as_f64().unwrap() / 1000.0
        );
    }
    println!("| lost | {} | {} |", quiet["lost"], watched["lost"]);
    println!("| server CPU (cores) | {quiet_cpu:.3} | {watched_cpu:.3} |");
    println!(
        "| feed: frames built, mean build (µs) | - | {} frames, {} µs |",
        feed["frames"], feed["mean_build_us"]
    );
    println!(
        "| page: frames drawn, mean / max draw (ms) | - | {frames}, {:.2} / {:.2} |",
        page["renderMsTotal"].as_f64().unwrap() / frames,
        page["renderMsMax"].as_f64().unwrap()
    );
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(watched["lost"], 0);
}

/// `vivachat replay --scenario FILE --port 0`: the real binary, and its port.
fn replay_board(scenario: &str) -> (common::Proc, u16) {
    let mut replay = common::Proc::spawn(&["replay", "--scenario", scenario, "--port", "0"]);
    let line = replay.expect("listening on");
    let port = line.rsplit(':').next().unwrap().trim().parse().unwrap();
    (replay, port)
}

/// The lecture board's position: its one `role="status"`.
async fn position(page: &Page) -> String {
    let text = page
        .eval(r#"document.querySelector('[role="status"]').textContent"#)
        .await;
    text.as_str().unwrap_or_default().to_string()
}

async fn wait_position(page: &Page, wanted: &str) {
    poll(
        || position(page),
        |now| now == wanted,
        |now| format!("the status never read {wanted:?}; it reads {now:?}"),
    )
    .await;
}

async fn key(page: &Page, key: &str, code: u32) {
    for kind in ["keyDown", "keyUp"] {
        page.call(
            "Input.dispatchKeyEvent",
            json!({"type": kind, "key": key, "code": key, "windowsVirtualKeyCode": code}),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lecture_board_steps_forwards_and_backwards_through_a_scenario() {
    let Some(browser) = Browser::launch().await else {
        return;
    };
    let (_replay, port) = replay_board("demos/scenarios/message-flow.txt");
    let board = browser.page(1024, 768, false).await;
    board.goto(&format!("http://127.0.0.1:{port}/")).await;
    wait_position(&board, "Step 0 of 7").await;
    wait_region(&board, "offline_messages", "its empty state", |t| {
        t.contains("empty")
    })
    .await;
    // Steps 1-2: alice connects, then writes to bob, who is offline.
    board.click("Next step").await;
    wait_position(&board, "Step 1 of 7").await;
    board.click("Next step").await;
    wait_position(&board, "Step 2 of 7").await;
    let queued = wait_region(&board, "offline_messages", "bob's deque", |t| {
        t.contains("bob") && t.contains("len 1")
    })
    .await;
    assert!(
        queued.contains("alice"),
        "the box names its sender: {queued}"
    );
    let step = region(&board, "This step").await;
    assert!(step.contains("alice sends bob: \"hello\""), "{step}");
    assert!(
        step.contains("offline_messages[bob].push_back O(1)*"),
        "{step}"
    );
    assert!(
        step.contains("blocked_users[bob].contains(alice) O(1)"),
        "{step}"
    );
    // Step 4: bob connects and his deque is flushed front first.
    board.click("Next step").await;
    board.click("Next step").await;
    wait_position(&board, "Step 4 of 7").await;
    wait_region(&board, "offline_messages", "the deque flushed", |t| {
        t.contains("empty")
    })
    .await;
    let step = region(&board, "This step").await;
    assert!(step.contains("presence.insert(bob)"), "{step}");
    assert!(step.contains("offline_messages.pop_front"), "{step}");
    // Going back shows exactly the state before: both messages queued again.
    board.click("Previous step").await;
    wait_position(&board, "Step 3 of 7").await;
    wait_region(&board, "offline_messages", "the deque back", |t| {
        t.contains("len 2")
    })
    .await;
    // (bob's pill fades out as it leaves.)
    wait_region(&board, "presence", "bob not online yet", |t| {
        !t.contains("bob")
    })
    .await;
    // The keys: → and Space forward, ← back, Home and End.
    key(&board, "ArrowRight", 39).await;
    wait_position(&board, "Step 4 of 7").await;
    key(&board, "ArrowLeft", 37).await;
    wait_position(&board, "Step 3 of 7").await;
    key(&board, "End", 35).await;
    wait_position(&board, "Step 7 of 7").await;
    key(&board, "Home", 36).await;
    wait_position(&board, "Step 0 of 7").await;

    // Predict: the next input first, its operations and its state on the next press.
    board
        .by_role("switch", "Predict")
        .await
        .call("function () { this.click(); }")
        .await;
    key(&board, " ", 32).await;
    wait_position(&board, "Step 1 of 7: predict").await;
    let step = region(&board, "This step").await;
    assert!(step.contains("alice connects"), "{step}");
    assert!(
        !step.contains("presence.insert"),
        "hidden until the next press: {step}"
    );
    wait_region(&board, "presence", "nobody online yet", |t| {
        t.contains("empty")
    })
    .await;
    key(&board, " ", 32).await;
    wait_position(&board, "Step 1 of 7").await;
    wait_region(&board, "presence", "alice", |t| t.contains("alice")).await;
    let step = region(&board, "This step").await;
    assert!(step.contains("presence.insert(alice)"), "{step}");

    // `/inspect` is the step the board shows, so `vivachat inspect` follows it.
    let (status, body) = common::http_get(
        format!("127.0.0.1:{port}").parse().unwrap(),
        "/inspect",
        &[],
    )
    .await;
    assert_eq!(status, 200);
    let state: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(state["server"]["lecture"]["step"], 1, "{state}");
    assert_eq!(state["presence"], json!(["alice"]));
    for size in [(1024, 768), (1920, 1080)] {
        let sized = browser.page(size.0, size.1, false).await;
        sized.goto(&format!("http://127.0.0.1:{port}/#4")).await;
        wait_position(&sized, "Step 4 of 7").await;
        sized
            .wait_for(
                "document.getAnimations().length === 0",
                "the animations to end",
            )
            .await;
        let seen = sized.eval(WHAT_IS_CUT).await;
        assert_eq!(seen["problems"], json!([]), "at {size:?}");
        if let Ok(dir) = std::env::var("VIVACHAT_SCREENSHOTS") {
            let name = format!("lecture-{}x{}.png", size.0, size.1);
            sized
                .screenshot(&std::path::Path::new(&dir).join(name))
                .await;
        }
        assert_no_problems(&sized, "the lecture board");
    }
    assert_no_problems(&board, "the lecture board");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_online_list_stays_right_through_a_storm_of_500_arrivals_and_250_departures() {
    let Some(browser) = Browser::launch().await else {
        return;
    };
    let server = TestServer::start_alone(Config::default()).await;
    let page = browser.page(LAPTOP.0, LAPTOP.1, false).await;
    join(&page, &server, "teacher").await;
    wait_online(&page, "the teacher", |o| o == ["teacher (you)"]).await;
    // The class asks for batched presence too, as the page and the client do.
    let mut class = Vec::new();
    for i in 0..500 {
        let mut student = server
            .connect_raw(&format!("/ws/s{i:03}?presence=batched"))
            .await
            .unwrap();
        assert_eq!(student.recv().await["type"], "welcome");
        class.push(student);
    }
    // Every other student leaves: 250 stay.
    let mut stayed = Vec::new();
    for (i, student) in class.into_iter().enumerate() {
        if i % 2 == 0 {
            student.close().await;
        } else {
            stayed.push(student);
        }
    }
    let mut expected: Vec<String> = (0..500)
        .filter(|i| i % 2 == 1)
        .map(|i| format!("s{i:03}"))
        .collect();
    expected.push("teacher (you)".into());
    expected.sort();
    let shown = wait_online(&page, "the 250 who stayed", |o| o == expected.as_slice()).await;
    assert_eq!(shown.len(), 251);
    let count = page
        .eval(r#"document.getElementById("online-count").textContent"#)
        .await;
    assert_eq!(count, json!("(251)"));
    // The log says it in a few lines, not 750.
    let lines = page
        .eval(r#"[...document.querySelectorAll('#log .notice')].filter((p) => / online| offline/.test(p.innerText)).length"#)
        .await;
    assert!(
        lines.as_u64().unwrap() < 100,
        "{lines} presence lines in the log"
    );
    assert_no_problems(&page, "the page");
    drop(stayed);
    server.stop().await;
}
