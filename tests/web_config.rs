//! `--web.config.file` and `--web.webhook-config.file` (exporter-toolkit's
//! web configuration) against the real binary, with certificates made by the
//! real `openssl` and `$2y$` hashes by the real `htpasswd`: HTTPS and what a
//! plain-HTTP client gets from it, a handshake that stalls (closed within
//! the header timeout), the client auth types, the minimum
//! version, basic auth on every path (the webhook included), the configured
//! headers, files that stop the start, a certificate renewed while running,
//! and the webhook's own listener with its own file.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::deliveries::{fresh_id, Delivery, Run};
use support::exporter::Exporter;
use support::http::{self, Response};
use support::samples::{self, Samples};
use support::tls::{basic_auth, Pki, TlsClient};
use support::tools::{require_tool, run_ok};

fn write(path: &Path, text: &str) -> PathBuf {
    std::fs::write(path, text).expect("write the file");
    path.to_owned()
}

/// `tls_server_config` with the Pki's server certificate, plus `extra` lines
/// (indented for `tls_server_config`), plus `rest` (top-level keys).
fn tls_yaml(extra: &str, rest: &str) -> String {
    format!(
        "tls_server_config:\n  cert_file: server.pem\n  key_file: server-key.pem\n{extra}{rest}"
    )
}

/// A client trusting the Pki's CA.
fn client(pki: &Pki) -> TlsClient {
    TlsClient::trusting(&pki.path("ca.pem"))
}

/// `client` with the client certificate `name` (`client`, `rogue-client`).
fn client_with(pki: &Pki, name: &str) -> TlsClient {
    client(pki).with_cert(
        &pki.path(&format!("{name}.pem")),
        &pki.path(&format!("{name}-key.pem")),
    )
}

/// Starts the exporter with `web.yml` (written in the Pki's directory, so
/// its relative names are the Pki's files) and `extra` arguments; ready when
/// `probe` gets 200 for `GET /-/ready` over HTTPS.
fn start_tls(pki: &Pki, yaml: &str, probe: TlsClient) -> Exporter {
    start_tls_logged(pki, yaml, probe, None)
}

fn start_tls_logged(pki: &Pki, yaml: &str, probe: TlsClient, log: Option<&Path>) -> Exporter {
    let config = write(&pki.path("web.yml"), yaml);
    let mut launch = Exporter::builder()
        .arg(format!("--web.config.file={}", config.display()))
        .ready_when(move |port| probe.get(port, "/-/ready").is_ok_and(|r| r.status == 200));
    if let Some(log) = log {
        launch = launch.log_to(log);
    }
    launch.start()
}

/// A connection to `port` on which `bytes` were sent; reads wait 10 s at most.
fn sent(port: u16, bytes: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream.write_all(bytes).expect("write");
    stream
}

/// What a plain-HTTP request to `port` gets back, raw, until the server
/// closes the connection (within 10 s).
fn plain_http_reply(port: u16) -> Vec<u8> {
    let mut stream = sent(port, b"GET /-/ready HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return reply,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                panic!("the TLS port kept a plain-HTTP connection open 10 s: {reply:?}")
            }
            Err(_) => return reply, // reset
        }
    }
}

/// Asserts a plain-HTTP client gets no 2xx from a TLS port: neither through
/// an HTTP client nor raw.
fn assert_plain_http_gets_no_2xx(port: u16) {
    let url = format!("http://127.0.0.1:{port}/-/ready");
    if let Some(resp) = http::try_get(&url) {
        assert!(
            !(200..300).contains(&resp.status),
            "plain HTTP to the TLS port got {} {}",
            resp.status,
            resp.body
        );
    }
    let reply = plain_http_reply(port);
    let text = String::from_utf8_lossy(&reply);
    assert!(
        !text.starts_with("HTTP/1.1 2") && !text.starts_with("HTTP/1.0 2"),
        "plain HTTP got a 2xx: {text:?}"
    );
}

// ---- TLS ---------------------------------------------------------------------------

#[test]
fn an_https_scrape_works_with_the_ca_and_plain_http_to_the_tls_port_gets_no_2xx() {
    let pki = Pki::new();
    let exporter = start_tls(&pki, &tls_yaml("", ""), client(&pki));
    let port = exporter.port();

    let resp = client(&pki).get(port, "/metrics").expect("HTTPS scrape");
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert!(
        resp.body
            .contains("# TYPE loadimpact_exporter_connections gauge"),
        "{}",
        resp.body
    );
    assert!(
        resp.handshake.server_cert == pki.der("server"),
        "not the server's certificate"
    );
    assert_eq!(
        resp.handshake.version,
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert_eq!(resp.handshake.alpn.as_deref(), Some("http/1.1"));
    // TLS 1.2 is on by default (exporter-toolkit's min_version is TLS12).
    let tls12 = client(&pki)
        .tls12_only()
        .get(port, "/-/ready")
        .expect("TLS 1.2");
    assert_eq!(
        tls12.handshake.version,
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    // HTTP/2 is offered by ALPN (http2 defaults to true), and served.
    let h2 = client(&pki)
        .alpn(&["h2", "http/1.1"])
        .connect(port)
        .expect("handshake");
    assert_eq!(h2.handshake().alpn.as_deref(), Some("h2"));
    assert_eq!(
        client(&pki).get_h2(port, "/-/ready"),
        Ok((200, hyper::Version::HTTP_2))
    );
    // A client that does not trust the CA refuses the server.
    let untrusting = TlsClient::trusting(&pki.path("rogue-ca.pem")).get(port, "/-/ready");
    assert!(untrusting.is_err(), "{untrusting:?}");

    assert_plain_http_gets_no_2xx(port);
    // ... and the listener still serves HTTPS after it.
    assert_eq!(
        client(&pki).get(port, "/-/ready").expect("HTTPS").status,
        200
    );
}

#[test]
fn a_stalled_handshake_is_closed_within_the_header_timeout() {
    let pki = Pki::new();
    let config = write(&pki.path("web.yml"), &tls_yaml("", ""));
    let probe = client(&pki);
    let exporter = Exporter::builder()
        .arg(format!("--web.config.file={}", config.display()))
        .arg("--web.read-header-timeout=1s")
        .ready_when(move |port| probe.get(port, "/-/ready").is_ok_and(|r| r.status == 200))
        .start();
    // The first bytes of a ClientHello's record, then nothing.
    let mut stalled = TcpStream::connect(("127.0.0.1", exporter.port())).expect("connect");
    stalled.write_all(&[0x16, 0x03, 0x01, 0x01]).expect("write");
    stalled
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let closed = match stalled.read(&mut buf) {
        Ok(0) => started.elapsed(),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            panic!("a stalled handshake was kept open 10 s")
        }
        Err(_) => started.elapsed(), // reset
        Ok(n) => panic!("answered a stalled handshake: {:?}", &buf[..n]),
    };
    assert!(
        closed >= Duration::from_millis(900) && closed < Duration::from_secs(5),
        "closed after {closed:?}, the header timeout is 1 s"
    );
    // A real client is served after it, and the close was counted.
    let scrape = client(&pki)
        .get(exporter.port(), "/metrics")
        .expect("HTTPS");
    assert_eq!(scrape.status, 200);
    let samples = samples::parse_samples(&scrape.body, "loadimpact_");
    assert_eq!(
        samples::sample(
            &samples,
            r#"loadimpact_exporter_connections_closed_total{listener="main",reason="header_timeout"}"#
        ),
        1.0
    );
}

#[test]
fn http2_false_offers_http_1_1_alone() {
    let pki = Pki::new();
    let yaml = tls_yaml("", "http_server_config:\n  http2: false\n");
    let exporter = start_tls(&pki, &yaml, client(&pki));
    let conn = client(&pki)
        .alpn(&["h2", "http/1.1"])
        .connect(exporter.port())
        .expect("handshake");
    assert_eq!(conn.handshake().alpn.as_deref(), Some("http/1.1"));
    let only_h2 = client(&pki).alpn(&["h2"]).get(exporter.port(), "/-/ready");
    assert!(only_h2.is_err(), "no protocol in common: {only_h2:?}");
}

/// The first bytes a plain-HTTP listener sends back to the HTTP/2 preface
/// (prior knowledge, h2c), up to 9 (a frame header, or `HTTP/1.1 `).
fn h2c_reply(port: u16) -> Vec<u8> {
    let mut stream = sent(
        port,
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0",
    );
    let mut reply = vec![0u8; 9];
    let mut read = 0;
    while read < reply.len() {
        match stream.read(&mut reply[read..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => read += n,
        }
    }
    reply.truncate(read);
    reply
}

#[test]
fn http2_false_turns_off_h2c_on_plain_http_too() {
    let dir = tempfile::tempdir().expect("dir");
    let served = |yaml: &str| {
        let config = write(&dir.path().join("web.yml"), yaml);
        let exporter = Exporter::builder()
            .arg(format!("--web.config.file={}", config.display()))
            .start();
        h2c_reply(exporter.port())
    };
    // By default the preface gets a SETTINGS frame (type 4) back.
    let reply = served("http_server_config:\n  http2: true\n");
    assert_eq!(reply.get(3), Some(&4u8), "no SETTINGS frame: {reply:?}");
    // With `http2: false`, HTTP/1.1 alone: the preface is a bad request,
    // answered as HTTP/1.1 or with the connection closed, never with HTTP/2.
    let reply = served("http_server_config:\n  http2: false\n");
    assert!(
        reply.is_empty() || reply.starts_with(b"HTTP/1.1 "),
        "{:?}",
        String::from_utf8_lossy(&reply)
    );
}

/// What `client_auth_type` does with no client certificate, one from the CA
/// and one from a rogue CA: `true` where the request is served.
fn assert_client_auth(auth: &str, expected: [bool; 3]) {
    let pki = Pki::new();
    let yaml = tls_yaml(
        &format!("  client_auth_type: {auth}\n  client_ca_file: ca.pem\n"),
        "",
    );
    let exporter = start_tls(&pki, &yaml, client_with(&pki, "client"));
    let clients = [
        ("no client certificate", client(&pki)),
        ("a certificate from the CA", client_with(&pki, "client")),
        (
            "a certificate from a rogue CA",
            client_with(&pki, "rogue-client"),
        ),
    ];
    for ((what, client), served) in clients.into_iter().zip(expected) {
        for (version, client) in [
            ("TLS 1.3", client.clone()),
            ("TLS 1.2", client.tls12_only()),
        ] {
            let result = client.get(exporter.port(), "/metrics");
            match (served, &result) {
                (true, Ok(resp)) => assert_eq!(resp.status, 200, "{auth}, {what}, {version}"),
                (false, Err(_)) => {}
                _ => panic!("{auth}, {what}, {version}: expected served={served}, got {result:?}"),
            }
        }
    }
}

#[test]
fn require_and_verify_client_cert_takes_only_a_certificate_from_the_ca() {
    assert_client_auth("RequireAndVerifyClientCert", [false, true, false]);
}

#[test]
fn verify_client_cert_if_given_takes_none_or_one_from_the_ca() {
    assert_client_auth("VerifyClientCertIfGiven", [true, true, false]);
}

#[test]
fn require_any_client_cert_takes_any_certificate_but_not_none() {
    assert_client_auth("RequireAnyClientCert", [false, true, true]);
}

#[test]
fn min_version_tls13_refuses_a_tls_1_2_client() {
    let pki = Pki::new();
    let exporter = start_tls(&pki, &tls_yaml("  min_version: TLS13\n", ""), client(&pki));
    let refused = client(&pki).tls12_only().get(exporter.port(), "/metrics");
    assert!(refused.is_err(), "{refused:?}");
    let resp = client(&pki)
        .get(exporter.port(), "/metrics")
        .expect("TLS 1.3");
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.handshake.version,
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
}

// ---- basic auth ---------------------------------------------------------------------

/// `htpasswd -nbB user password`: a `$2y$` hash (htpasswd's default cost, 5).
fn htpasswd(user: &str, password: &str) -> String {
    let out = run_ok(&require_tool("htpasswd"), &["-nbB", user, password]);
    let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let hash = line
        .strip_prefix(&format!("{user}:"))
        .unwrap_or_else(|| panic!("htpasswd wrote {line:?}"))
        .to_owned();
    assert!(hash.starts_with("$2y$"), "{hash}");
    hash
}

/// A `$2b$` hash from the bcrypt crate.
fn bcrypt_2b(password: &str) -> String {
    let hash = bcrypt::hash(password, 5).expect("bcrypt");
    assert!(hash.starts_with("$2b$"), "{hash}");
    hash
}

fn get_as(url: &str, auth: Option<&str>) -> Response {
    match auth {
        Some(auth) => http::send("GET", url, &[("Authorization", auth)], None),
        None => http::get(url),
    }
}

fn samples_as(exporter: &Exporter, auth: &str) -> Samples {
    let resp = get_as(&exporter.url("/metrics"), Some(auth));
    assert_eq!(resp.status, 200, "{}", resp.body);
    samples::parse_samples(&resp.body, "loadimpact_")
}

fn assert_unauthorized(resp: &Response, what: &str) {
    assert_eq!(resp.status, 401, "{what}: {}", resp.body);
    assert_eq!(resp.header("www-authenticate"), Some("Basic"), "{what}");
}

#[test]
fn basic_auth_with_htpasswd_and_bcrypt_hashes_guards_every_path_the_webhook_included() {
    let dir = tempfile::tempdir().expect("temp dir");
    let yaml = format!(
        "basic_auth_users:\n  alice: {}\n  bob: {}\n",
        htpasswd("alice", "secret-a"),
        bcrypt_2b("secret-b")
    );
    let config = write(&dir.path().join("web.yml"), &yaml);
    let log = dir.path().join("exporter.log");
    let alice = basic_auth("alice", "secret-a");
    let bob = basic_auth("bob", "secret-b");
    let probe = alice.clone();
    let exporter = Exporter::builder()
        .arg(format!("--web.config.file={}", config.display()))
        .arg("--log.level=debug")
        .log_to(&log)
        .ready_when(move |port| {
            let url = format!("http://127.0.0.1:{port}/-/ready");
            http::try_send("GET", &url, &[("Authorization", probe.as_str())], None)
                .is_some_and(|r| r.status == 200)
        })
        .start();

    for path in ["/metrics", "/-/ready", "/-/healthy", "/api/v1/runs", "/"] {
        let url = exporter.url(path);
        assert_unauthorized(&get_as(&url, None), &format!("{path} without credentials"));
        for (what, auth) in [
            (
                "alice with a wrong password",
                basic_auth("alice", "secret-b"),
            ),
            ("bob with a wrong password", basic_auth("bob", "secret-a")),
            ("an unknown user", basic_auth("carol", "secret-a")),
            ("an empty password", basic_auth("alice", "")),
            ("a bearer token", "Bearer secret-a".to_owned()),
        ] {
            assert_unauthorized(&get_as(&url, Some(&auth)), &format!("{path}, {what}"));
        }
        assert_eq!(
            get_as(&url, Some(&alice)).status,
            200,
            "{path} as alice ($2y$)"
        );
        assert_eq!(get_as(&url, Some(&bob)).status, 200, "{path} as bob ($2b$)");
    }

    // The webhook: a delivery with a wrong password or none moves nothing.
    let run = Run::new(1, 7, 70, 700);
    let before = samples_as(&exporter, &alice);
    for auth in [None, Some(basic_auth("alice", "wrong"))] {
        let mut delivery = Delivery::new(&run.started(), &fresh_id());
        if let Some(auth) = auth {
            delivery.headers.push(("Authorization".into(), auth));
        }
        assert_unauthorized(&delivery.send(&exporter.delivery_url()), "the webhook");
    }
    let after = samples_as(&exporter, &alice);
    assert_eq!(
        samples::state_samples(&before),
        samples::state_samples(&after),
        "a refused delivery moved a metric"
    );
    let mut delivery = Delivery::new(&run.started(), &fresh_id());
    delivery.headers.push(("Authorization".into(), bob.clone()));
    let resp = delivery.send(&exporter.delivery_url());
    assert_eq!(resp.status, 200, "{}", resp.body);
    let after = samples_as(&exporter, &alice);
    assert_eq!(samples::delta(&before, &after, &run.started_total()), 1.0);

    // A right password is checked once, then remembered; a wrong one each time.
    let timed = |auth: &str| {
        let started = Instant::now();
        let status = get_as(&exporter.url("/-/ready"), Some(auth)).status;
        (status, started.elapsed())
    };
    let fresh = basic_auth("carol", "x");
    let (status, unknown) = timed(&fresh);
    assert_eq!(status, 401);
    let (status, cached) = timed(&alice);
    assert_eq!(status, 200);
    eprintln!("an unknown user (a bcrypt check of cost 5): {unknown:?}; a remembered password: {cached:?}");

    let text = std::fs::read_to_string(&log).expect("log");
    for secret in ["secret-a", "secret-b", "$2y$", "$2b$"] {
        assert!(!text.contains(secret), "the log holds {secret:?}:\n{text}");
    }
}

#[test]
fn the_configured_headers_are_on_every_response() {
    let dir = tempfile::tempdir().expect("temp dir");
    let yaml = format!(
        "http_server_config:\n  headers:\n    Strict-Transport-Security: max-age=31536000; includeSubDomains\n    X-Content-Type-Options: nosniff\n    X-Frame-Options: sameorigin\n    X-XSS-Protection: \"1; mode=block\"\n    Content-Security-Policy: \"default-src 'none'\"\nbasic_auth_users:\n  alice: {}\n",
        htpasswd("alice", "pw")
    );
    let config = write(&dir.path().join("web.yml"), &yaml);
    let alice = basic_auth("alice", "pw");
    let probe = alice.clone();
    let exporter = Exporter::builder()
        .arg(format!("--web.config.file={}", config.display()))
        .ready_when(move |port| {
            let url = format!("http://127.0.0.1:{port}/-/ready");
            http::try_send("GET", &url, &[("Authorization", probe.as_str())], None)
                .is_some_and(|r| r.status == 200)
        })
        .start();
    let responses = [
        ("200", get_as(&exporter.url("/metrics"), Some(&alice))),
        ("404", get_as(&exporter.url("/nothing-here"), Some(&alice))),
        ("401", get_as(&exporter.url("/metrics"), None)),
        (
            "405",
            http::send(
                "POST",
                &exporter.url("/metrics"),
                &[("Authorization", alice.as_str())],
                Some(b""),
            ),
        ),
    ];
    for (what, resp) in &responses {
        assert_eq!(resp.status.to_string(), *what, "{}", resp.body);
        for (name, value) in [
            (
                "strict-transport-security",
                "max-age=31536000; includeSubDomains",
            ),
            ("x-content-type-options", "nosniff"),
            ("x-frame-options", "sameorigin"),
            ("x-xss-protection", "1; mode=block"),
            ("content-security-policy", "default-src 'none'"),
        ] {
            assert_eq!(resp.header(name), Some(value), "{name} on the {what}");
        }
    }
}

// ---- files that stop the start -------------------------------------------------------------

/// Starts the binary with `web.yml` = `yaml` in a Pki's directory, which must
/// exit non-zero; what it logged.
fn start_fails(pki: &Pki, yaml: &str) -> String {
    let config = write(&pki.path("web.yml"), yaml);
    let (status, log) = Exporter::builder()
        .arg(format!("--web.config.file={}", config.display()))
        .run_until_exit();
    assert!(!status.success(), "started with {yaml}\n{log}");
    assert!(log.contains("--web.config.file="), "{log}");
    assert!(log.contains("web.yml"), "{log}");
    log
}

#[test]
fn a_bad_file_stops_the_start_with_a_message_that_names_the_problem() {
    let pki = Pki::new();
    let log = start_fails(
        &pki,
        "http_server_config:\n  headers:\n    Server: loadimpact\n",
    );
    assert!(
        log.contains(r#"the header \"Server\" can not be configured"#)
            || log.contains(r#"the header "Server" can not be configured"#),
        "{log}"
    );
    let log = start_fails(&pki, "tls_server_config: [cert_file\n");
    assert!(log.contains("invalid YAML"), "{log}");
    let log = start_fails(&pki, "tls_server_confg:\n  cert_file: server.pem\n");
    assert!(log.contains("unknown field `tls_server_confg`"), "{log}");
    let log = start_fails(&pki, &tls_yaml("  key_flie: server-key.pem\n", ""));
    assert!(log.contains("unknown field `key_flie`"), "{log}");
    let log = start_fails(
        &pki,
        "tls_server_config:\n  cert_file: nowhere.pem\n  key_file: server-key.pem\n",
    );
    assert!(log.contains("cannot read cert_file"), "{log}");
    assert!(
        log.contains(&pki.path("nowhere.pem").display().to_string()),
        "{log}"
    );
    let log = start_fails(&pki, &tls_yaml("  min_version: TLS11\n", ""));
    assert!(log.contains("TLS12 and TLS13 only"), "{log}");
    let log = start_fails(
        &pki,
        &tls_yaml("  client_auth_type: RequireAndVerifyClientCert\n", ""),
    );
    assert!(log.contains("needs client_ca_file"), "{log}");
    let log = start_fails(&pki, "basic_auth_users:\n  alice: plain-password\n");
    assert!(
        log.contains("alice") && log.contains("not a bcrypt hash"),
        "{log}"
    );
    assert!(!log.contains("plain-password"), "{log}");
    // The key of another certificate.
    pki.server_cert("other", "other");
    let log = start_fails(
        &pki,
        "tls_server_config:\n  cert_file: server.pem\n  key_file: other-key.pem\n",
    );
    assert!(log.contains("do not go together"), "{log}");

    // A file that is not there.
    let (status, log) = Exporter::builder()
        .arg(format!(
            "--web.config.file={}",
            pki.path("absent.yml").display()
        ))
        .run_until_exit();
    assert!(!status.success());
    assert!(
        log.contains("absent.yml") && log.contains("cannot read"),
        "{log}"
    );
    // The webhook's file without a webhook listener means nothing: refused.
    let (status, log) = Exporter::builder()
        .arg(format!(
            "--web.webhook-config.file={}",
            pki.path("web.yml").display()
        ))
        .run_until_exit();
    assert!(!status.success());
    assert!(log.contains("--webhook.listen-address"), "{log}");
}

// ---- a certificate renewed while running --------------------------------------------------

fn copy(pki: &Pki, from: &str, to: &str) {
    std::fs::copy(pki.path(from), pki.path(to)).expect("copy");
}

#[test]
fn a_renewed_certificate_is_served_to_new_connections_without_a_restart() {
    let pki = Pki::new();
    let log = pki.path("exporter.log");
    let exporter = start_tls_logged(&pki, &tls_yaml("", ""), client(&pki), Some(&log));
    let port = exporter.port();
    let original = pki.der("server");
    let mut kept = client(&pki).connect(port).expect("handshake");
    assert!(
        kept.handshake().server_cert == original,
        "not the server's certificate"
    );
    let resp = kept
        .request("GET", "/-/ready", &[], None, true)
        .expect("first request");
    assert_eq!(resp.status, 200);

    pki.server_cert("renewed", "renewed server");
    assert_ne!(pki.describe("renewed"), pki.describe("server"));
    copy(&pki, "renewed-key.pem", "server-key.pem");
    copy(&pki, "renewed.pem", "server.pem");
    let resp = client(&pki)
        .get(port, "/-/ready")
        .expect("a new connection");
    assert_eq!(resp.status, 200);
    assert!(
        resp.handshake.server_cert == pki.der("renewed"),
        "a new connection did not get the renewed certificate"
    );
    // The connection made before keeps its certificate and is served.
    let resp = kept
        .request("GET", "/metrics", &[], None, true)
        .expect("kept connection");
    assert_eq!(resp.status, 200);
    assert!(
        kept.handshake().server_cert == original,
        "the kept connection changed certificate"
    );

    // A broken certificate: new connections are refused, the kept one is served.
    write(
        &pki.path("server.pem"),
        "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
    );
    for _ in 0..5 {
        let refused = client(&pki).get(port, "/-/ready");
        assert!(
            refused.is_err(),
            "served with a broken certificate: {refused:?}"
        );
    }
    let resp = kept
        .request("GET", "/-/ready", &[], None, true)
        .expect("kept connection");
    assert_eq!(resp.status, 200);
    let text = std::fs::read_to_string(&log).expect("log");
    let errors = text
        .lines()
        .filter(|l| l.contains("web configuration invalid"))
        .collect::<Vec<_>>();
    assert_eq!(
        errors.len(),
        1,
        "the error is logged once, not per connection: {errors:#?}"
    );
    assert!(errors[0].contains("server.pem"), "{}", errors[0]);

    // Fixed: served again, and said so.
    copy(&pki, "renewed.pem", "server.pem");
    let resp = client(&pki).get(port, "/-/ready").expect("fixed");
    assert!(
        resp.handshake.server_cert == pki.der("renewed"),
        "not the renewed certificate"
    );
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(text.contains("web configuration valid again"), "{text}");
}

// ---- the webhook's own listener -----------------------------------------------------------

#[test]
fn the_webhook_listener_has_its_own_file_tls_there_and_plain_http_on_the_metrics_port() {
    let pki = Pki::new();
    let hook_yaml = tls_yaml(
        "",
        &format!(
            "basic_auth_users:\n  loadimpact: {}\n",
            htpasswd("loadimpact", "hook-pw")
        ),
    );
    let hook_config = write(&pki.path("hook.yml"), &hook_yaml);
    let main_config = write(
        &pki.path("main.yml"),
        &format!(
            "basic_auth_users:\n  prometheus: {}\n",
            bcrypt_2b("scrape-pw")
        ),
    );
    let prometheus = basic_auth("prometheus", "scrape-pw");
    let loadimpact = basic_auth("loadimpact", "hook-pw");
    let probe = prometheus.clone();
    let exporter = Exporter::builder()
        .webhook_listener()
        .arg(format!("--web.config.file={}", main_config.display()))
        .arg(format!(
            "--web.webhook-config.file={}",
            hook_config.display()
        ))
        .ready_when(move |port| {
            let url = format!("http://127.0.0.1:{port}/-/ready");
            http::try_send("GET", &url, &[("Authorization", probe.as_str())], None)
                .is_some_and(|r| r.status == 200)
        })
        .start();
    let hook_port = exporter.webhook_port();
    assert_ne!(hook_port, exporter.port());

    // The metrics port: plain HTTP, its own user only.
    assert_eq!(
        get_as(&exporter.url("/metrics"), Some(&prometheus)).status,
        200
    );
    assert_unauthorized(
        &get_as(&exporter.url("/metrics"), Some(&loadimpact)),
        "the webhook's user on the metrics port",
    );
    let https_on_main = client(&pki).get(exporter.port(), "/metrics");
    assert!(
        https_on_main.is_err(),
        "the metrics port spoke TLS: {https_on_main:?}"
    );

    // The webhook port: TLS, the webhook's user only.
    let run = Run::new(2, 20, 200, 2000);
    let before = samples_as(&exporter, &prometheus);
    let post = |auth: Option<&str>| {
        let delivery = Delivery::new(&run.started(), &fresh_id());
        let mut headers: Vec<(&str, &str)> = delivery
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        if let Some(auth) = auth {
            headers.push(("Authorization", auth));
        }
        client(&pki)
            .request(
                hook_port,
                "POST",
                "/webhook",
                &headers,
                Some(&delivery.payload),
            )
            .expect("HTTPS to the webhook port")
    };
    for (what, auth) in [
        ("no credentials", None),
        ("the metrics user", Some(prometheus.as_str())),
    ] {
        let resp = post(auth);
        assert_eq!(resp.status, 401, "{what}: {}", resp.body);
        assert_eq!(resp.header("www-authenticate"), Some("Basic"));
    }
    assert_eq!(
        samples::state_samples(&before),
        samples::state_samples(&samples_as(&exporter, &prometheus)),
        "a refused delivery moved a metric"
    );
    let resp = post(Some(&loadimpact));
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert!(
        resp.handshake.server_cert == pki.der("server"),
        "not the server's certificate"
    );
    let after = samples_as(&exporter, &prometheus);
    assert_eq!(samples::delta(&before, &after, &run.started_total()), 1.0);

    assert_plain_http_gets_no_2xx(hook_port);
}
