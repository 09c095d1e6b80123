//! The web console over HTTP, against the real binary and a real database:
//! login, refusals (no token, wrong token, no CSRF token, read-only), the
//! overview, a dead letter's page, a filtered replay delivered at the
//! target, a purge after confirming, and hostile text shown escaped.
//! The last test does it again in headless Chromium
//! (tests/console/browser.mjs) and saves the screenshots of docs/console.md.

use std::time::Duration;

use outbox_relay::NewMessage;
use outbox_relay::storage::Storage;
use outbox_relay_tests::{Scratch, eventually, read_jsonl};

use crate::{free_port, spawn_relay, terminate};

const WAIT: Duration = Duration::from_secs(60);
const TOKEN: &str = "console-test-token-0123456789";

struct Console {
    base: String,
    http: reqwest::Client,
    cookie: Option<String>,
}

impl Console {
    fn new(port: u16) -> Self {
        Self {
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            cookie: None,
        }
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(c) = &self.cookie {
            req = req.header("cookie", c);
        }
        let res = req.send().await.unwrap();
        (res.status().as_u16(), res.text().await.unwrap())
    }

    async fn post(&self, path: &str, form: &[(&str, &str)]) -> (u16, String, Option<String>) {
        let mut req = self.http.post(format!("{}{path}", self.base)).form(form);
        if let Some(c) = &self.cookie {
            req = req.header("cookie", c);
        }
        let res = req.send().await.unwrap();
        let location = res
            .headers()
            .get("location")
            .map(|v| v.to_str().unwrap().to_string());
        (res.status().as_u16(), res.text().await.unwrap(), location)
    }

    async fn login(&mut self) {
        let res = self
            .http
            .post(format!("{}/login", self.base))
            .form(&[("token", TOKEN)])
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 303, "login redirects");
        let cookie = res.headers()["set-cookie"].to_str().unwrap().to_string();
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
        self.cookie = Some(cookie.split(';').next().unwrap().to_string());
    }

    /// The CSRF token of the page at `path`.
    async fn csrf(&self, path: &str) -> String {
        let (_, body) = self.get(path).await;
        let at = body
            .find("name=\"csrf\" value=\"")
            .expect("a form with a CSRF token")
            + 19;
        body[at..at + 64].to_string()
    }
}

/// The console on `port` and two targets: `orders` (a `file` target writing
/// `orders_path` in the sandbox; `/out/...` is the mapped directory, any
/// other path keeps it from starting) and `audit` (`flaky` with one attempt:
/// everything is dead-lettered there, and delivered when replayed).
fn config(scratch: &Scratch, port: u16, read_only: bool, orders_path: &str) -> std::path::PathBuf {
    std::fs::write(scratch.path().join("console.token"), format!("{TOKEN}\n")).unwrap();
    scratch.write_config(&format!(
        r#"
[admin]
listen = "127.0.0.1:{port}"
console = {{ token = {{ file = "console.token" }}, read_only = {read_only} }}

[[routes]]
events = ["order.*"]
targets = ["orders"]

[[routes]]
events = ["*"]
targets = ["audit"]

[targets.orders]
plugin = "file"
config = {{ path = "{orders_path}" }}
sandbox = {{ dirs = {{ "/out" = "{out}" }} }}

[targets.audit]
plugin = "flaky"
config = {{ succeed_on_attempt = 2, path = "/out/audit.jsonl" }}
sandbox = {{ dirs = {{ "/out" = "{out}" }} }}
retry = {{ max_attempts = 1 }}
"#,
        out = scratch.path().join("out").display()
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_logs_in_reads_replays_and_purges_and_strangers_get_nothing() {
    let scratch = Scratch::new();
    let port = free_port();
    let config = config(&scratch, port, false, "/out/orders.jsonl");
    let storage = scratch.storage().await;
    let hostile = "<script>alert('x')</script>";
    let mut messages: Vec<NewMessage> = (0..4)
        .map(|i| {
            NewMessage::new(
                "order.created",
                format!(r#"{{"order":{i},"note":"{hostile}"}}"#).into_bytes(),
            )
            .with_header("x-evil", hostile)
        })
        .collect();
    messages.push(NewMessage::new(
        format!("user.{hostile}"),
        vec![0xff; 70 * 1024],
    ));
    storage.save(&messages).await.unwrap();
    let mut relay = spawn_relay(&config);
    let mut console = Console::new(port);
    eventually("the console answers", WAIT, || async {
        reqwest::get(format!("{}/healthz", console.base))
            .await
            .ok()
            .map(|_| ())
    })
    .await;

    // Strangers: no data, 401; a wrong token too; /metrics and /healthz stay open.
    let (status, body) = console.get("/").await;
    assert_eq!(status, 401);
    assert!(
        !body.contains("orders") && !body.contains("audit"),
        "{body}"
    );
    let (status, body) = console.get("/dead-letters").await;
    assert_eq!((status, body.contains("order.created")), (401, false));
    let (status, _, _) = console.post("/login", &[("token", "wrong")]).await;
    assert_eq!(status, 401);
    let (status, _, _) = console
        .post(
            "/dead-letters/act",
            &[("op", "purge-matching"), ("confirm", "yes")],
        )
        .await;
    assert_eq!(status, 401);
    assert_eq!(console.get("/healthz").await.0, 200);
    assert_eq!(console.get("/metrics").await.0, 200);

    console.login().await;
    // Every message is dead at `audit` (flaky fails a first attempt, and
    // one attempt is all it has).
    eventually("five dead letters", WAIT, || async {
        (outbox_relay_tests::dead_letters(&storage, "audit")
            .await
            .len()
            == 5)
            .then_some(())
    })
    .await;
    let (status, overview) = console.get("/").await;
    assert_eq!(status, 200);
    assert!(
        overview.contains("data-target=\"orders\"") && overview.contains("data-target=\"audit\"")
    );
    assert!(overview.contains("running"), "{overview}");

    // A dead letter: payload (JSON, escaped), headers, history.
    let letters = outbox_relay_tests::dead_letters(&storage, "audit").await;
    let json_one = letters
        .iter()
        .find(|d| d.event_name.as_deref() == Some("order.created"))
        .unwrap();
    let (status, page) = console
        .get(&format!("/dead-letters/audit/{}", json_one.seq))
        .await;
    assert_eq!(status, 200);
    assert!(
        !page.contains(hostile),
        "raw HTML from a payload or header: {page}"
    );
    assert!(
        page.contains("&lt;script&gt;") || page.contains("&#60;script&#62;"),
        "escaped, still readable: {page}"
    );
    assert!(page.contains("&quot;order&quot;") || page.contains("&#34;order&#34;"));
    assert!(
        page.contains("id=\"history\"") && page.contains("<tr><td>1</td>"),
        "its attempt: {page}"
    );
    let big = letters
        .iter()
        .find(|d| d.event_name.as_deref() != Some("order.created"))
        .unwrap();
    let (_, page) = console
        .get(&format!("/dead-letters/audit/{}", big.seq))
        .await;
    assert!(
        page.contains("id=\"truncated\"") && page.contains("71680 bytes"),
        "a huge payload is cut"
    );
    assert!(!page.contains(hostile));
    let (_, list) = console.get("/dead-letters").await;
    assert!(!list.contains(hostile), "event names escaped in the list");
    assert!(list.contains("<strong id=\"count\">5</strong>"));

    // Changes need the CSRF token.
    let (status, _, _) = console
        .post(
            "/dead-letters/act",
            &[("op", "purge-matching"), ("confirm", "yes")],
        )
        .await;
    assert_eq!(status, 403);
    assert_eq!(
        outbox_relay_tests::dead_letters(&storage, "audit")
            .await
            .len(),
        5
    );

    // Replay the filtered selection (the order events): confirm first, then
    // see them delivered at `audit` on their second attempt.
    let csrf = console.csrf("/dead-letters?event=order.*").await;
    let (status, confirm, _) = console
        .post(
            "/dead-letters/act",
            &[
                ("csrf", &csrf),
                ("op", "replay-matching"),
                ("target", "audit"),
                ("event", "order.*"),
            ],
        )
        .await;
    assert_eq!(status, 200);
    assert!(confirm.contains("Replay 4 dead letters?"), "{confirm}");
    let (status, _, location) = console
        .post(
            "/dead-letters/act",
            &[
                ("csrf", &csrf),
                ("op", "replay-matching"),
                ("target", "audit"),
                ("event", "order.*"),
                ("confirm", "yes"),
            ],
        )
        .await;
    assert_eq!(status, 303);
    assert!(location.unwrap().contains("replayed"));
    let delivered = eventually("the replayed letters delivered", WAIT, || async {
        let d = read_jsonl(&scratch.path().join("out/audit.jsonl"));
        (d.len() >= 4).then_some(d)
    })
    .await;
    assert_eq!(delivered.len(), 4);
    assert!(delivered.iter().all(|l| l["attempt"] == 2), "{delivered:?}");
    eventually("the dead-letter count falls to 1", WAIT, || async {
        let (_, list) = console.get("/dead-letters").await;
        list.contains("<strong id=\"count\">1</strong>")
            .then_some(())
    })
    .await;
    // The orders target got its four, once.
    assert_eq!(
        read_jsonl(&scratch.path().join("out/orders.jsonl")).len(),
        4
    );

    // Purge the one left, after confirming.
    let seq = big.seq.to_string();
    let pick = format!("{seq}:audit");
    let csrf = console.csrf(&format!("/dead-letters/audit/{seq}")).await;
    let (_, confirm, _) = console
        .post(
            "/dead-letters/act",
            &[("csrf", &csrf), ("op", "purge-selected"), ("pick", &pick)],
        )
        .await;
    assert!(confirm.contains("Purge 1 dead letters?"), "{confirm}");
    let (status, _, _) = console
        .post(
            "/dead-letters/act",
            &[
                ("csrf", &csrf),
                ("op", "purge-selected"),
                ("pick", &pick),
                ("confirm", "yes"),
            ],
        )
        .await;
    assert_eq!(status, 303);
    assert!(
        outbox_relay_tests::dead_letters(&storage, "audit")
            .await
            .is_empty()
    );
    let (_, list) = console.get("/dead-letters").await;
    assert!(list.contains("<strong id=\"count\">0</strong>"));

    // A script with the bearer token needs no CSRF token.
    let res = console
        .http
        .get(format!("{}/relays", console.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert!(res.text().await.unwrap().contains("orders"));
    assert!(terminate(&mut relay).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_console_shows_but_changes_nothing() {
    let scratch = Scratch::new();
    let port = free_port();
    let config = config(&scratch, port, true, "/out/orders.jsonl");
    let storage = scratch.storage().await;
    storage
        .save(&[NewMessage::new("user.created", b"{}".to_vec())])
        .await
        .unwrap();
    let mut relay = spawn_relay(&config);
    let mut console = Console::new(port);
    eventually("a dead letter", WAIT, || async {
        (outbox_relay_tests::dead_letters(&storage, "audit")
            .await
            .len()
            == 1)
            .then_some(())
    })
    .await;
    eventually("the console answers", WAIT, || async {
        reqwest::get(format!("{}/healthz", console.base))
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    console.login().await;
    let (_, list) = console.get("/dead-letters").await;
    assert!(list.contains("read-only") && !list.contains("id=\"purge-matching\""));
    let csrf = console.csrf("/dead-letters").await;
    let (status, body, _) = console
        .post(
            "/dead-letters/act",
            &[
                ("csrf", &csrf),
                ("op", "purge-matching"),
                ("confirm", "yes"),
            ],
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        outbox_relay_tests::dead_letters(&storage, "audit")
            .await
            .len(),
        1
    );
    assert!(terminate(&mut relay).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_error_text_a_target_name_and_filters_are_shown_escaped() {
    let scratch = Scratch::new();
    let port = free_port();
    let config = config(&scratch, port, false, "/out/orders.jsonl");
    let storage = scratch.storage().await;
    storage
        .save(&[NewMessage::new("user.created", b"{}".to_vec())])
        .await
        .unwrap();
    let mut relay = spawn_relay(&config);
    let mut console = Console::new(port);
    let dead = eventually("a dead letter", WAIT, || async {
        let d = outbox_relay_tests::dead_letters(&storage, "audit").await;
        (d.len() == 1).then(|| d[0].clone())
    })
    .await;
    // What a plugin wrote to stderr ends up in the error text: make it hostile.
    let evil = "<img src=x onerror=alert(1)>\"'</pre><script>alert(2)</script>";
    sqlx::query("UPDATE outbox_deliveries SET last_error = ?1, history = json_array(json_object('attempt', 1, 'at_ms', 0, 'error', ?1))")
        .bind(evil)
        .execute(storage.pool())
        .await
        .unwrap();
    eventually("the console answers", WAIT, || async {
        reqwest::get(format!("{}/healthz", console.base))
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    console.login().await;
    let pages = [
        "/dead-letters".to_string(),
        format!("/dead-letters/audit/{}", dead.seq),
        "/targets/audit".to_string(),
        // Filters echoed back into the form.
        format!(
            "/dead-letters?event={}&error={}",
            form_urlencoded_param(evil),
            form_urlencoded_param(evil)
        ),
        format!("/targets/{}", form_urlencoded_param(evil)),
        format!("/dead-letters/{}/1", form_urlencoded_param(evil)),
    ];
    for path in &pages {
        let (_, body) = console.get(path).await;
        assert!(
            !body.contains("<img src=x") && !body.contains("<script>alert"),
            "{path} shows raw HTML: {body}"
        );
    }
    let (_, detail) = console.get(&pages[1]).await;
    assert!(
        detail.contains("onerror=alert(1)"),
        "the text is still shown, escaped"
    );
    assert!(terminate(&mut relay).success());
}

/// `text` percent-encoded for a query string or a path segment.
fn form_urlencoded_param(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `outbox-relay run` like [`spawn_relay`], with its log (JSON lines) in `log`.
fn spawn_relay_logging(config: &std::path::Path, log: &std::path::Path) -> std::process::Child {
    std::process::Command::new(crate::relay_binary())
        .args(["--log-format", "json", "run", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

/// What the browser test needs from the machine (`make setup` installs it);
/// a missing piece fails the test and says what to install.
fn browser_tools() -> std::path::PathBuf {
    let modules = outbox_relay_tests::target_dir().join("console-browser");
    let node = std::process::Command::new("node").arg("--version").output();
    assert!(
        node.is_ok_and(|o| o.status.success()),
        "node is missing: the console browser test needs Node.js 20+ and npm, then `make setup`"
    );
    assert!(
        modules
            .join("node_modules/playwright-core/package.json")
            .is_file(),
        "playwright-core is not installed in {}: run `make setup` (tests/setup.sh: npm ci from tests/console/package-lock.json)",
        modules.display()
    );
    assert!(
        std::path::Path::new("/usr/bin/chromium").is_file(),
        "/usr/bin/chromium is missing: run `make setup` (tests/setup.sh: apt-get install chromium)"
    );
    modules
}

/// The console in headless Chromium (tests/console/browser.mjs): log in
/// through the form, the overview's targets and lag, a target's page, a dead
/// letter's payload and attempts, an event-glob filter, a replay of the
/// selected ones confirmed and delivered, a purge confirmed, 401 for a
/// stranger and 403 without the CSRF token, log out. Saves the pages'
/// screenshots in docs/console/ (docs/console.md shows them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_logs_in_filters_replays_and_purges_through_the_pages() {
    let modules = browser_tools();
    let scratch = Scratch::new();
    let port = free_port();
    // `orders` cannot start (its path is outside its sandbox): its cursor
    // stands, so its lag is all five messages of the log (lag counts the log
    // beyond the cursor, routed there or not). Everything is dead at `audit`.
    let config = config(&scratch, port, false, "/nowhere/orders.jsonl");
    let storage = scratch.storage().await;
    let mut messages: Vec<NewMessage> = [
        ("order.created", 1041, "12.50"),
        ("order.created", 1042, "7.00"),
        ("order.paid", 1041, "12.50"),
    ]
    .iter()
    .map(|(event, order, total)| {
        NewMessage::new(
            *event,
            format!(r#"{{"order":{order},"total":"{total}","currency":"EUR"}}"#).into_bytes(),
        )
        .with_key(format!("order-{order}"))
        .with_header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .with_header("x-note", "<b>not bold</b>")
    })
    .collect();
    messages.push(NewMessage::new(
        "user.created",
        br#"{"user":"ada"}"#.to_vec(),
    ));
    messages.push(NewMessage::new(
        "user.deleted",
        b"user grace asked to be forgotten".to_vec(),
    ));
    storage.save(&messages).await.unwrap();
    let log = scratch.path().join("relay.log");
    let mut relay = spawn_relay_logging(&config, &log);
    eventually("five dead letters at audit", WAIT, || async {
        (outbox_relay_tests::dead_letters(&storage, "audit")
            .await
            .len()
            == 5)
            .then_some(())
    })
    .await;
    eventually("the console answers", WAIT, || async {
        reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
            .await
            .ok()
            .map(|_| ())
    })
    .await;

    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let started = std::time::Instant::now();
    let run = tokio::process::Command::new("node")
        .arg(repo.join("tests/console/browser.mjs"))
        .env("CONSOLE_URL", format!("http://127.0.0.1:{port}"))
        .env("CONSOLE_TOKEN", TOKEN)
        .env(
            "CONSOLE_EXPECT",
            r#"{"targets":["audit","orders"],"lagging":"orders","lag":5,"dead":5,
                "event":"order.*","matching":3,"other":"user.*","other_matching":2}"#,
        )
        .env("CONSOLE_BROWSER_MODULES", &modules)
        .env("CONSOLE_CHROMIUM", "/usr/bin/chromium")
        .env("CONSOLE_SCREENSHOTS", repo.join("docs/console"))
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .expect("the browser script did not finish within 300 s")
        .expect("cannot run node");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // The rest reads the database, the files and the log.
    let stopped = terminate(&mut relay);
    let relay_log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        output.status.success(),
        "the browser script failed ({}):\n{said}\n--- the relay's log:\n{relay_log}",
        output.status
    );
    assert!(stopped.success(), "the relay exited with {stopped}");
    println!("{said}(the browser script took {:?})", started.elapsed());

    // The replayed three reached `audit` on their second attempt, once each;
    // one of the other two was purged; `orders` never started.
    let delivered = read_jsonl(&scratch.path().join("out/audit.jsonl"));
    let mut ids: Vec<String> = delivered
        .iter()
        .map(|l| l["id"].as_str().unwrap_or_default().to_string())
        .collect();
    ids.sort_unstable();
    let mut orders: Vec<String> = messages[..3].iter().map(|m| m.id.to_string()).collect();
    orders.sort_unstable();
    assert_eq!(ids, orders, "{delivered:?}");
    assert!(delivered.iter().all(|l| l["attempt"] == 2), "{delivered:?}");
    let left = outbox_relay_tests::dead_letters(&storage, "audit").await;
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(
        left[0]
            .event_name
            .as_deref()
            .is_some_and(|e| e.starts_with("user."))
    );
    assert!(!scratch.path().join("out/orders.jsonl").exists());

    // Each change is in the log as an `audit` event; the token is not.
    let audits: Vec<serde_json::Value> = relay_log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["target"] == "audit")
        .collect();
    let changes: Vec<(&str, &str, i64)> = audits
        .iter()
        .filter_map(|l| {
            Some((
                l["fields"]["action"].as_str()?,
                l["fields"]["by"].as_str()?,
                l["fields"]["changed"].as_i64()?,
            ))
        })
        .collect();
    assert_eq!(
        changes,
        [("replay", "session", 3), ("purge", "session", 1)],
        "{audits:?}"
    );
    assert!(!relay_log.contains(TOKEN), "the token is in the log");
}
