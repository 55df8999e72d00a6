//! Who may post, against the real binary: tokens in the path or the query,
//! wrong and missing ones refused with 401 and counted without moving a run
//! metric, a token file rotated while running, the token from the
//! environment, no token in any log line (at debug level) or page, the open
//! webhook's warning, the address allowlist with and without a trusted
//! proxy, and the caps on distinct projects and load tests.

mod support;

use std::path::Path;
use std::time::Duration;

use support::deliveries::{self, fresh_id, Run};
use support::exporter::Exporter;
use support::http;
use support::process::send_signal;
use support::samples::{assert_only_moved, events_total, requests_total, sample};
use support::wait_for;

const TOKEN: &str = "s3cr3t-T0ken_for.the~webhook";
const NEXT_TOKEN: &str = "the-next-token-0123456789";

fn token_file(dir: &Path, contents: &str) -> std::path::PathBuf {
    let path = dir.join("tokens");
    std::fs::write(&path, contents).expect("write the token file");
    path
}

/// Posts a start of `run` to `path` (with its query) on the webhook's
/// listener; the status.
fn post_to(exporter: &Exporter, path: &str, run: &Run) -> http::Response {
    deliveries::post(&exporter.webhook_url(path), &run.started(), &fresh_id())
}

#[test]
fn a_token_is_taken_in_the_path_or_the_query_and_a_wrong_or_missing_one_gets_401() {
    let dir = tempfile::tempdir().expect("dir");
    let file = token_file(dir.path(), &format!("{TOKEN}\n"));
    let exporter = Exporter::builder()
        .arg(format!("--webhook.token-file={}", file.display()))
        .start();
    let before = exporter.samples();
    let refused = [
        "/webhook".to_owned(),
        "/webhook/wrong-token".to_owned(),
        format!("/webhook/{TOKEN}x"),
        format!("/webhook?token={TOKEN}x"),
        "/webhook?token=".to_owned(),
        format!("/webhook/?token={TOKEN}x"),
    ];
    for (i, path) in refused.iter().enumerate() {
        let resp = post_to(&exporter, path, &Run::new(1, 1, 1, 100 + i as u64));
        assert_eq!(resp.status, 401, "{path}: {}", resp.body);
        assert!(resp.body.contains("token"), "{}", resp.body);
        assert!(!resp.body.contains(TOKEN), "the body shows the token");
    }
    // A token under another path is no webhook.
    let resp = post_to(
        &exporter,
        &format!("/other/{TOKEN}"),
        &Run::new(1, 1, 1, 99),
    );
    assert_eq!(resp.status, 404);
    let after = exporter.samples();
    assert_only_moved(
        &before,
        &after,
        &[(&requests_total(401), refused.len() as f64)],
        "refused deliveries",
    );

    let run = Run::new(1, 1, 1, 1);
    let resp = post_to(&exporter, &format!("/webhook/{TOKEN}"), &run);
    assert_eq!(resp.status, 200, "{}", resp.body);
    let resp = post_to(
        &exporter,
        &format!("/webhook?token={TOKEN}"),
        &Run::new(1, 1, 1, 2),
    );
    assert_eq!(resp.status, 200, "{}", resp.body);
    let resp = post_to(
        &exporter,
        &format!("/webhook?x=1&token={TOKEN}"),
        &Run::new(1, 1, 1, 3),
    );
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert_eq!(exporter.sample(&run.running()), 3.0);
}

#[test]
fn a_token_file_rotated_while_running_takes_effect_without_a_restart() {
    let dir = tempfile::tempdir().expect("dir");
    let file = token_file(dir.path(), &format!("{TOKEN}\n"));
    let mut exporter = Exporter::builder()
        .arg(format!("--webhook.token-file={}", file.display()))
        .start();
    fn with(exporter: &Exporter, token: &str, id: u64) -> u16 {
        post_to(
            exporter,
            &format!("/webhook/{token}"),
            &Run::new(1, 1, 1, id),
        )
        .status
    }
    assert_eq!(with(&exporter, NEXT_TOKEN, 1), 401);
    // Rotation, step one: both valid. A mounted Secret is replaced by a
    // rename, as here.
    let staged = dir.path().join("tokens.new");
    std::fs::write(&staged, format!("{TOKEN}\n{NEXT_TOKEN}\n")).expect("write");
    std::fs::rename(&staged, &file).expect("rename");
    let mut id = 10;
    wait_for(
        "the new token to be accepted",
        Duration::from_secs(10),
        || {
            id += 1;
            (with(&exporter, NEXT_TOKEN, id) == 200).then_some(())
        },
    );
    assert_eq!(
        with(&exporter, TOKEN, 100),
        200,
        "the old token during the rotation"
    );
    // Step two: the old one goes.
    std::fs::write(&file, format!("{NEXT_TOKEN}\n")).expect("write");
    wait_for(
        "the old token to be refused",
        Duration::from_secs(10),
        || {
            id += 1;
            (with(&exporter, TOKEN, id) == 401).then_some(())
        },
    );
    assert_eq!(with(&exporter, NEXT_TOKEN, 200), 200);
    // A broken file keeps the tokens in force; SIGHUP re-reads without
    // stopping the process.
    std::fs::write(&file, "\n").expect("write");
    send_signal(exporter.pid(), "HUP");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(with(&exporter, NEXT_TOKEN, 201), 200);
    assert_eq!(with(&exporter, TOKEN, 202), 401);
    // The tokens survive a restart as the file says.
    exporter.kill9();
    std::fs::write(&file, format!("{TOKEN}\n")).expect("write");
    exporter.restart();
    assert_eq!(with(&exporter, TOKEN, 300), 200);
    assert_eq!(with(&exporter, NEXT_TOKEN, 301), 401);
}

#[test]
fn the_token_can_come_from_the_environment() {
    let exporter = Exporter::builder()
        .env("LOADIMPACT_EXPORTER_WEBHOOK_TOKEN", TOKEN)
        .start();
    assert_eq!(
        post_to(&exporter, "/webhook", &Run::new(1, 1, 1, 1)).status,
        401
    );
    let resp = post_to(
        &exporter,
        &format!("/webhook/{TOKEN}"),
        &Run::new(1, 1, 1, 2),
    );
    assert_eq!(resp.status, 200, "{}", resp.body);
}

#[test]
fn the_token_appears_in_no_log_line_page_or_metric() {
    let dir = tempfile::tempdir().expect("dir");
    let file = token_file(dir.path(), &format!("{TOKEN}\n"));
    let log = dir.path().join("exporter.log");
    let mut exporter = Exporter::builder()
        .arg(format!("--webhook.token-file={}", file.display()))
        .arg("--log.level=trace")
        .log_to(&log)
        .start();
    let guess = "a-wrong-guess-of-the-token";
    let run = Run::new(1, 1, 1, 1);
    assert_eq!(
        post_to(&exporter, &format!("/webhook/{TOKEN}"), &run).status,
        200
    );
    assert_eq!(
        post_to(&exporter, &format!("/webhook/{guess}"), &run).status,
        401
    );
    assert_eq!(
        post_to(&exporter, &format!("/webhook?token={guess}"), &run).status,
        401
    );
    // A bad body and a bad method with the right token, for the error paths.
    let bad = http::send(
        "POST",
        &exporter.url(&format!("/webhook/{TOKEN}")),
        &[("Content-Type", "application/json")],
        Some(b"{not json"),
    );
    assert_eq!(bad.status, 400);
    assert!(!bad.body.contains(TOKEN));
    let get = http::get(&exporter.url(&format!("/webhook/{TOKEN}")));
    assert_eq!(get.status, 405);
    assert!(!get.body.contains(TOKEN));
    std::fs::write(&file, format!("{TOKEN}\n{NEXT_TOKEN}\n")).expect("rotate");
    wait_for("the reload", Duration::from_secs(10), || {
        (post_to(
            &exporter,
            &format!("/webhook/{NEXT_TOKEN}"),
            &Run::new(1, 1, 1, 2),
        )
        .status
            == 200)
            .then_some(())
    });
    for page in ["/metrics", "/", "/api/v1/runs"] {
        let body = http::get(&exporter.url(page)).body;
        assert!(!body.contains(TOKEN), "{page} shows the token");
    }
    exporter.terminate();
    let logs = std::fs::read_to_string(&log).expect("read the log");
    assert!(logs.contains("tokens were reloaded"), "{logs}");
    assert!(logs.lines().count() > 5, "{logs}");
    for secret in [TOKEN, NEXT_TOKEN, guess] {
        assert!(!logs.contains(secret), "the log shows {secret}:\n{logs}");
    }
}

#[test]
fn an_open_webhook_says_so_once_at_start_and_a_bad_token_file_stops_the_start() {
    let dir = tempfile::tempdir().expect("dir");
    let log = dir.path().join("open.log");
    let mut exporter = Exporter::builder().log_to(&log).start();
    exporter.post_expect(&Run::new(1, 1, 1, 1).started(), "accepted");
    exporter.terminate();
    let logs = std::fs::read_to_string(&log).expect("log");
    assert_eq!(logs.matches("the webhook is open").count(), 1, "{logs}");

    let file = token_file(dir.path(), "good-token\nnot a url/safe token\n");
    let (status, out) = Exporter::builder()
        .arg(format!("--webhook.token-file={}", file.display()))
        .run_until_exit();
    assert!(!status.success());
    assert!(out.contains("token 2"), "{out}");
    assert!(
        !out.contains("url/safe"),
        "the error shows the token: {out}"
    );
    let (status, out) = Exporter::builder()
        .arg(format!(
            "--webhook.token-file={}",
            dir.path().join("missing").display()
        ))
        .run_until_exit();
    assert!(!status.success());
    assert!(out.contains("token file"), "{out}");
    // The variable set but empty (a compose file's unset `${TOKEN}`, an empty
    // Secret key) stops the start too, rather than leaving the webhook open.
    for empty in ["", "  \n"] {
        let (status, out) = Exporter::builder()
            .env("LOADIMPACT_EXPORTER_WEBHOOK_TOKEN", empty)
            .run_until_exit();
        assert!(!status.success(), "started with {empty:?}: {out}");
        assert!(
            out.contains("LOADIMPACT_EXPORTER_WEBHOOK_TOKEN holds no token"),
            "{out}"
        );
    }
}

#[test]
fn the_allowlist_takes_the_peer_or_a_trusted_proxys_forwarded_client() {
    let run = Run::new(1, 1, 1, 1);
    let post_from = |exporter: &Exporter, forwarded: Option<&str>| {
        let mut headers = deliveries::headers("test.started", &fresh_id());
        if let Some(f) = forwarded {
            headers.push(("X-Forwarded-For".into(), f.into()));
        }
        let body = serde_json::to_vec(&run.started()).expect("json");
        http::send("POST", &exporter.url("/webhook"), &headers, Some(&body)).status
    };
    // The peer (127.0.0.1) is outside; what it claims does not count.
    let outside = Exporter::start(&["--webhook.allowed-cidrs=10.0.0.0/8,203.0.113.0/24"]);
    let before = outside.samples();
    assert_eq!(post_from(&outside, None), 403);
    assert_eq!(post_from(&outside, Some("203.0.113.5")), 403);
    assert_only_moved(
        &before,
        &outside.samples(),
        &[(&requests_total(403), 2.0)],
        "posts from outside the allowlist",
    );
    // The peer itself inside.
    let inside = Exporter::start(&["--webhook.allowed-cidrs=127.0.0.0/8"]);
    assert_eq!(post_from(&inside, None), 200);
    // Through a trusted proxy, the forwarded client decides.
    let proxied = Exporter::start(&[
        "--webhook.allowed-cidrs=203.0.113.0/24",
        "--web.trusted-proxies=127.0.0.1",
    ]);
    assert_eq!(post_from(&proxied, Some("203.0.113.5")), 200);
    assert_eq!(post_from(&proxied, Some("203.0.113.5, 127.0.0.1")), 200);
    assert_eq!(post_from(&proxied, Some("198.51.100.1")), 403);
    assert_eq!(post_from(&proxied, Some("203.0.113.5, 198.51.100.1")), 403);
    assert_eq!(post_from(&proxied, Some("not-an-address")), 403);
    // A forwarded value that is not text (a byte above 0x7f, which HTTP
    // allows) names no client: refused, even where the proxy itself may post.
    let proxy_allowed = Exporter::start(&[
        "--webhook.allowed-cidrs=127.0.0.0/8",
        "--web.trusted-proxies=127.0.0.1",
    ]);
    let body = serde_json::to_vec(&Run::new(1, 1, 1, 2).started()).expect("json");
    let raw_status = |forwarded: &[u8]| {
        let mut request = format!(
            "POST /webhook HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
             X-LoadImpact-Event: test.started\r\nX-LoadImpact-ID: {}\r\nContent-Length: {}\r\n\
             Connection: close\r\nX-Forwarded-For: ",
            fresh_id(),
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(forwarded);
        request.extend_from_slice(b"\r\n\r\n");
        request.extend_from_slice(&body);
        let mut stream =
            std::net::TcpStream::connect(("127.0.0.1", proxy_allowed.port())).expect("connect");
        std::io::Write::write_all(&mut stream, &request).expect("send");
        let mut answer = String::new();
        let _ = std::io::Read::read_to_string(&mut stream, &mut answer);
        answer
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse::<u16>().ok())
            .unwrap_or_else(|| panic!("no status line in {answer:?}"))
    };
    assert_eq!(raw_status(b"\xff, 198.51.100.9"), 403);
    assert_eq!(raw_status(b"127.0.0.5"), 200, "a readable one still counts");
    assert_eq!(
        post_from(&proxied, None),
        403,
        "the proxy itself is outside"
    );
    // The pages are not behind the webhook's allowlist.
    assert_eq!(http::get(&proxied.url("/metrics")).status, 200);
}

#[test]
fn deliveries_for_new_projects_and_load_tests_past_the_caps_get_429() {
    let exporter = Exporter::start(&["--limits.max-projects=2", "--limits.max-load-tests=3"]);
    let a = Run::new(1, 1, 11, 1);
    let b = Run::new(1, 2, 21, 2);
    exporter.post_expect(&a.started(), "accepted");
    exporter.post_expect(&b.started(), "accepted");

    // A third project is refused, and moves nothing but its counts.
    let before = exporter.samples();
    let c = Run::new(1, 3, 31, 3);
    let resp = exporter.post(&c.started());
    assert_eq!(resp.status, 429, "{}", resp.body);
    assert_eq!(resp.json()["limit"], "projects");
    assert!(resp.body.contains("--limits.max-projects"), "{}", resp.body);
    assert_only_moved(
        &before,
        &exporter.samples(),
        &[
            (&requests_total(429), 1.0),
            (&events_total("test.started", "refused"), 1.0),
        ],
        "a refused project",
    );
    // Known projects keep working: a new run of a known load test, then a
    // third load test, then a fourth is refused.
    exporter.post_expect(&Run::new(1, 1, 11, 4).started(), "accepted");
    exporter.post_expect(&Run::new(1, 1, 12, 5).started(), "accepted");
    let resp = exporter.post(&Run::new(1, 2, 22, 6).started());
    assert_eq!(resp.status, 429, "{}", resp.body);
    assert_eq!(resp.json()["limit"], "load_tests");
    // Runs already known finish whatever the caps.
    exporter.post_expect(&a.finished(3, Some("Finished")), "accepted");
    exporter.post_expect(&b.finished(3, Some("Finished")), "accepted");
    let samples = exporter.samples();
    assert_eq!(sample(&samples, &a.running()), 2.0);
    assert_eq!(sample(&samples, &c.started_total()), 0.0);
    assert_eq!(sample(&samples, &requests_total(429)), 2.0);
}
