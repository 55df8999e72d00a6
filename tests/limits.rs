//! The listeners' limits against the real binary: a slowloris client is
//! closed within the header timeout while a normal client is served; a
//! flood of connections past `--web.max-connections` neither exceeds the
//! limit nor keeps a normal client out; an idle keep-alive connection is
//! closed; a body that stalls gets 408 and moves nothing; and a separate
//! webhook listener serves the webhook alone while the main one serves the rest.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::deliveries::Run;
use support::exporter::Exporter;
use support::http;
use support::samples::{assert_only_moved, sample};

fn connect(port: u16) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    stream
}

/// Whether the server closed `stream` within `within`: a read returns end
/// of file or a reset, rather than timing out.
fn closed_by_server(stream: &mut TcpStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).expect("read timeout");
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            // A response (an error page) may come before the close.
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false
            }
            Err(_) => return true,
        }
    }
}

/// Reads one whole response (headers and a `Content-Length` body) from a
/// keep-alive connection; its status code.
fn read_response(stream: &mut TcpStream) -> u16 {
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("read timeout");
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).expect("read a response");
        assert!(n > 0, "the connection closed before a whole response");
        data.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&data).to_string();
        let Some(end) = text.find("\r\n\r\n") else {
            continue;
        };
        let head = &text[..end];
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .unwrap_or(0);
        if data.len() >= end + 4 + length {
            let status = head.split(' ').nth(1).expect("a status line");
            return status.parse().expect("a status code");
        }
    }
}

#[test]
fn slowloris_connections_are_closed_within_the_header_timeout_while_others_are_served() {
    let exporter = Exporter::start(&["--web.read-header-timeout=2s", "--web.max-connections=1000"]);
    let port = exporter.port();
    // 300 clients send a request's head a few bytes at a time, never finishing it.
    let mut slow: Vec<TcpStream> = (0..300)
        .map(|_| {
            let mut s = connect(port);
            s.write_all(b"POST /webhook HTTP/1.1\r\nHost: x\r\n")
                .expect("write");
            s
        })
        .collect();
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let trickle = {
        let mut streams: Vec<TcpStream> =
            slow.iter().map(|s| s.try_clone().expect("clone")).collect();
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                // A write to a connection the server closed fails: drop it.
                streams.retain_mut(|s| s.write_all(b"X-a: b\r\n").is_ok());
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    // Meanwhile a normal client is served.
    exporter.post_expect(&Run::new(1, 1, 1, 1).started(), "accepted");
    assert_eq!(http::get(&exporter.url("/-/healthy")).status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "served only after the timeout"
    );

    let mut still_open = 0;
    for stream in &mut slow {
        if !closed_by_server(stream, Duration::from_secs(6)) {
            still_open += 1;
        }
    }
    stop.store(true, Ordering::SeqCst);
    trickle.join().expect("trickler");
    assert_eq!(
        still_open, 0,
        "slowloris connections still open after the header timeout"
    );
    let samples = exporter.samples();
    let closed = sample(
        &samples,
        r#"loadimpact_exporter_connections_closed_total{listener="main",reason="header_timeout"}"#,
    );
    assert!(closed >= 300.0, "closed for the header timeout: {closed}");
}

#[test]
fn a_connection_flood_stays_within_the_limit_and_a_normal_client_is_still_served() {
    let exporter = Exporter::start(&["--web.read-header-timeout=1s", "--web.max-connections=16"]);
    let port = exporter.port();
    let stop = Arc::new(AtomicBool::new(false));
    // The flood: keeps 60 silent connections open, opening new ones as the
    // server closes old ones.
    let flood = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut open: Vec<TcpStream> = Vec::new();
            let mut opened = 0u32;
            while !stop.load(Ordering::SeqCst) {
                open.retain_mut(|s| {
                    let mut b = [0u8; 1];
                    matches!(s.read(&mut b), Err(e) if e.kind() == ErrorKind::WouldBlock)
                });
                while open.len() < 60 {
                    if let Ok(s) = TcpStream::connect(("127.0.0.1", port)) {
                        s.set_nonblocking(true).expect("nonblocking");
                        open.push(s);
                        opened += 1;
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            opened
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    for id in 1..=2 {
        // Queued behind the flood, it is served once the limit frees a slot.
        let run = Run::new(1, 1, 1, id);
        exporter.post_expect(&run.started(), "accepted");
    }
    let samples = exporter.samples();
    stop.store(true, Ordering::SeqCst);
    let opened = flood.join().expect("flood");
    assert!(opened > 60, "the flood opened only {opened} connections");
    let open_now = sample(
        &samples,
        r#"loadimpact_exporter_connections{listener="main"}"#,
    );
    assert!(
        (1.0..=16.0).contains(&open_now),
        "open connections {open_now}, limit 16"
    );
    assert_eq!(
        sample(
            &samples,
            r#"loadimpact_test_runs_running{organization_id="1",project_id="1"}"#
        ),
        2.0
    );
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let exporter = Exporter::start(&["--web.idle-timeout=1s", "--web.read-header-timeout=5s"]);
    let mut stream = connect(exporter.port());
    for _ in 0..2 {
        stream
            .write_all(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("write");
        assert_eq!(read_response(&mut stream), 200);
    }
    // Kept alive between requests, then closed once idle for a second.
    assert!(closed_by_server(&mut stream, Duration::from_secs(4)));
    let closed = exporter.sample(
        r#"loadimpact_exporter_connections_closed_total{listener="main",reason="idle_timeout"}"#,
    );
    assert_eq!(closed, 1.0);
}

#[test]
fn a_body_that_stalls_is_answered_408_and_moves_nothing() {
    let exporter = Exporter::start(&["--web.read-timeout=1s"]);
    let before = exporter.samples();
    let mut stream = connect(exporter.port());
    stream
        .write_all(
            b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              X-LoadImpact-Event: test.started\r\nContent-Length: 100\r\n\r\n{\"event\":",
        )
        .expect("write");
    assert_eq!(read_response(&mut stream), 408);
    let after = exporter.samples();
    assert_only_moved(
        &before,
        &after,
        &[(r#"loadimpact_webhook_requests_total{code="408"}"#, 1.0)],
        "a stalled body",
    );
}

#[test]
fn a_webhook_listener_of_its_own_serves_the_webhook_alone() {
    let exporter = Exporter::builder().webhook_listener().start();
    assert_ne!(exporter.webhook_port(), exporter.port());
    let run = Run::new(1, 1, 1, 1);
    exporter.post_expect(&run.started(), "accepted");
    // The pages are not on the webhook's listener ...
    for page in ["/metrics", "/-/ready", "/api/v1/runs", "/"] {
        assert_eq!(http::get(&exporter.webhook_url(page)).status, 404, "{page}");
    }
    // ... and the webhook is not on the main one.
    let on_main = http::post_json(
        &exporter.url("/webhook"),
        &run.finished(3, Some("Finished")),
    );
    assert_eq!(on_main.status, 404, "{}", on_main.body);
    let samples = exporter.samples();
    assert_eq!(
        sample(
            &samples,
            r#"loadimpact_test_runs_running{organization_id="1",project_id="1"}"#
        ),
        1.0
    );
    assert!(samples.contains_key(r#"loadimpact_exporter_connections{listener="webhook"}"#));
}
