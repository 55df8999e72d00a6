//! The web configuration file: what is refused and why, each client auth
//! type and protocol limit through a real (in-memory) rustls handshake, and
//! the per-connection reload and its cache. The certificates are the
//! fixtures of `testdata/` (`generate.sh` remakes them).

use super::*;
use base64::Engine as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};
use std::io::{Read, Write};

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/webconfig/testdata")
        .join(name)
}

fn parse(yaml: &str) -> Result<Settings, Error> {
    Settings::parse(yaml, &testdata(""))
}

fn parse_err(yaml: &str) -> String {
    match parse(yaml) {
        Ok(settings) => panic!("accepted: {yaml}\n{settings:?}"),
        Err(e) => e.to_string(),
    }
}

/// A directory with a configuration file `web.yml` holding `yaml`, and the
/// fixtures copied beside it (so that relative names work).
struct Dir {
    dir: tempfile::TempDir,
}

impl Dir {
    fn new(yaml: &str) -> Dir {
        let dir = tempfile::tempdir().expect("temp dir");
        for name in [
            "ca.pem",
            "server.pem",
            "server-key.pem",
            "renewed.pem",
            "renewed-key.pem",
        ] {
            std::fs::copy(testdata(name), dir.path().join(name)).expect("copy fixture");
        }
        let d = Dir { dir };
        d.write("web.yml", yaml.as_bytes());
        d
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, bytes: &[u8]) {
        std::fs::write(self.path(name), bytes).expect("write");
    }

    fn source(&self) -> Source {
        Source::open("--web.config.file", Some(&self.path("web.yml"))).expect("valid file")
    }
}

const TLS: &str = "tls_server_config:\n  cert_file: server.pem\n  key_file: server-key.pem\n";

fn tls_with(extra: &str) -> String {
    format!("{TLS}{extra}")
}

/// The rustls configuration of a valid file's TLS part (warnings checked empty).
fn server_config(yaml: &str) -> Arc<ServerConfig> {
    let (config, warnings) = server_config_warned(yaml);
    assert!(warnings.is_empty(), "{warnings:?}");
    config
}

fn server_config_warned(yaml: &str) -> (Arc<ServerConfig>, Vec<String>) {
    let settings = parse(yaml).expect("valid");
    let tls = settings.tls.as_ref().expect("TLS configured");
    let materials = settings.read_materials().expect("readable");
    let (config, warnings) = tls::server_config(tls, &materials, settings.http2).expect("builds");
    (Arc::new(config), warnings)
}

fn certs(name: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(testdata(name))
        .expect("pem")
        .collect::<Result<_, _>>()
        .expect("certs")
}

fn key(name: &str) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_file(testdata(name)).expect("key")
}

/// A client trusting the test CA, speaking `versions`, with the client
/// certificate `cert` (`client` or `rogue-client`) if any, offering `alpn`.
fn client(
    cert: Option<&str>,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in certs("ca.pem") {
        roots.add(cert).expect("root");
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(versions)
            .expect("versions")
            .with_root_certificates(roots);
    let mut config = match cert {
        Some(name) => builder
            .with_client_auth_cert(
                certs(&format!("{name}.pem")),
                key(&format!("{name}-key.pem")),
            )
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

fn default_client(cert: Option<&str>) -> Arc<ClientConfig> {
    client(cert, rustls::DEFAULT_VERSIONS, &[])
}

/// What the client saw of a completed handshake.
#[derive(Debug)]
struct Handshake {
    version: rustls::ProtocolVersion,
    alpn: Option<Vec<u8>>,
    server_cert: Vec<u8>,
    suite: rustls::CipherSuite,
}

/// A whole handshake between the two in memory, then one record each way
/// (in TLS 1.3 the server judges the client's certificate after the
/// client's side is done); the first error either side met.
fn handshake(
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
) -> Result<Handshake, rustls::Error> {
    let name = ServerName::try_from("localhost").expect("name");
    let mut c = ClientConnection::new(client, name)?;
    let mut s = ServerConnection::new(server)?;
    c.writer().write_all(b"ping").expect("buffer");
    let mut got_ping = false;
    for _ in 0..20 {
        let mut wire = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut wire).expect("to memory");
        }
        let mut input = wire.as_slice();
        while !input.is_empty() {
            s.read_tls(&mut input).expect("from memory");
            s.process_new_packets()?;
        }
        let mut buf = [0u8; 16];
        if let Ok(n) = s.reader().read(&mut buf) {
            if &buf[..n] == b"ping" && !got_ping {
                got_ping = true;
                s.writer().write_all(b"pong").expect("buffer");
            }
        }
        let mut wire = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut wire).expect("to memory");
        }
        let mut input = wire.as_slice();
        while !input.is_empty() {
            c.read_tls(&mut input).expect("from memory");
            c.process_new_packets()?;
        }
        if let Ok(n) = c.reader().read(&mut buf) {
            if &buf[..n] == b"pong" {
                return Ok(Handshake {
                    version: c.protocol_version().expect("version"),
                    alpn: c.alpn_protocol().map(<[u8]>::to_vec),
                    server_cert: c.peer_certificates().expect("server cert")[0].to_vec(),
                    suite: c.negotiated_cipher_suite().expect("suite").suite(),
                });
            }
        }
    }
    panic!("the handshake neither completed nor failed");
}

// ---- the file ----------------------------------------------------------------

#[test]
fn an_empty_file_is_plain_http_open_to_all_with_http2() {
    for yaml in ["", "\n", "# nothing\n", "---\n"] {
        let settings = parse(yaml).expect(yaml);
        assert_eq!(settings.tls, None);
        assert!(settings.http2);
        assert!(settings.users.is_empty());
        assert!(settings.headers.is_empty());
    }
    let settings =
        parse("tls_server_config:\nhttp_server_config:\nbasic_auth_users:\n").expect("nulls");
    assert_eq!(settings.tls, None);
}

#[test]
fn bad_yaml_and_unknown_or_repeated_keys_are_refused() {
    assert!(parse_err("tls_server_config: [").contains("invalid YAML"));
    assert!(parse_err("- a\n- b\n").contains("invalid YAML"));
    let unknown = parse_err("tls_server_config:\n  cert_fil: server.pem\n");
    assert!(unknown.contains("cert_fil"), "{unknown}");
    let unknown = parse_err("tls_config: {}\n");
    assert!(unknown.contains("tls_config"), "{unknown}");
    let unknown = parse_err("http_server_config:\n  http3: true\n");
    assert!(unknown.contains("http3"), "{unknown}");
    let repeated = parse_err("basic_auth_users:\n  a: x\nbasic_auth_users:\n  b: y\n");
    assert!(repeated.contains("invalid YAML"), "{repeated}");
    let wrong_type = parse_err("http_server_config:\n  http2: sometimes\n");
    assert!(wrong_type.contains("invalid YAML"), "{wrong_type}");
}

#[test]
fn a_yaml_error_quotes_no_text_of_the_file() {
    let message = parse_err("tls_server_config:\n  key: \"SECRETKEYTEXT\n  cert: [\n");
    assert!(!message.contains("SECRETKEYTEXT"), "{message}");
}

#[test]
fn only_the_allowed_headers_with_their_allowed_values_are_taken() {
    let settings = parse(
        "http_server_config:\n  headers:\n    Strict-Transport-Security: max-age=31536000\n    X-Content-Type-Options: nosniff\n    X-Frame-Options: deny\n    X-XSS-Protection: \"1; mode=block\"\n    Content-Security-Policy: default-src 'self'\n",
    )
    .expect("allowed");
    assert_eq!(settings.headers.len(), 5);
    let security = Security {
        headers: settings.headers,
        ..Security::open()
    };
    let mut headers = HeaderMap::new();
    headers.insert("x-frame-options", HeaderValue::from_static("sameorigin"));
    security.add_headers(&mut headers);
    assert_eq!(headers["x-frame-options"], "deny");
    assert_eq!(headers["strict-transport-security"], "max-age=31536000");
    assert_eq!(headers["x-xss-protection"], "1; mode=block");

    for (name, value) in [
        ("Server", "x"),
        ("Set-Cookie", "a=b"),
        ("Access-Control-Allow-Origin", "*"),
        ("x-frame-options", "deny"),
    ] {
        let message = parse_err(&format!(
            "http_server_config:\n  headers:\n    {name}: \"{value}\"\n"
        ));
        assert!(
            message.contains(&format!("{name:?} can not be configured")),
            "{message}"
        );
    }
    let message = parse_err("http_server_config:\n  headers:\n    X-Frame-Options: allow\n");
    assert!(message.contains("X-Frame-Options"), "{message}");
    let message = parse_err("http_server_config:\n  headers:\n    X-Content-Type-Options: sniff\n");
    assert!(message.contains("nosniff"), "{message}");
}

#[test]
fn users_need_bcrypt_hashes_and_the_error_names_the_user_only() {
    let message = parse_err("basic_auth_users:\n  alice: hunter2\n");
    assert!(message.contains("alice"), "{message}");
    assert!(!message.contains("hunter2"), "{message}");
    let settings = parse(
        "basic_auth_users:\n  alice: $2y$04$E0/GAwhGAnB/nCaLNV.k4uvLxl3aCZVnXDciecV5E5p3V8nWqhjOS\n",
    )
    .expect("htpasswd hash");
    assert_eq!(settings.users.len(), 1);
}

#[test]
fn tls_is_on_when_any_of_its_keys_is_set_and_needs_a_cert_and_key() {
    assert_eq!(
        parse("tls_server_config:\n  min_version: TLS13\n")
            .expect("no TLS")
            .tls,
        None
    );
    assert_eq!(
        parse("tls_server_config:\n  cert_file: \"\"\n")
            .expect("empty is unset")
            .tls,
        None
    );
    assert!(
        parse_err("tls_server_config:\n  key_file: server-key.pem\n")
            .contains("missing one of cert or cert_file")
    );
    assert!(parse_err("tls_server_config:\n  cert_file: server.pem\n")
        .contains("missing one of key or key_file"));
    assert!(
        parse_err("tls_server_config:\n  client_auth_type: RequireAndVerifyClientCert\n")
            .contains("missing one of cert or cert_file")
    );
    let settings = parse(TLS).expect("valid");
    let tls = settings.tls.expect("TLS");
    assert_eq!(
        tls.cert,
        Material::File(testdata("server.pem")),
        "relative to the file"
    );
    assert_eq!(tls.client_auth, ClientAuth::NoClientCert);
    assert_eq!(
        (tls.min_version, tls.max_version),
        (TlsVersion::Tls12, TlsVersion::Tls13)
    );
}

#[test]
fn client_auth_types_and_their_cas_are_checked() {
    for (name, auth) in [
        ("NoClientCert", ClientAuth::NoClientCert),
        ("RequestClientCert", ClientAuth::RequestClientCert),
        ("RequireAnyClientCert", ClientAuth::RequireAnyClientCert),
        ("RequireClientCert", ClientAuth::RequireAnyClientCert),
        (
            "VerifyClientCertIfGiven",
            ClientAuth::VerifyClientCertIfGiven,
        ),
        (
            "RequireAndVerifyClientCert",
            ClientAuth::RequireAndVerifyClientCert,
        ),
    ] {
        let ca = if auth.verifies() {
            "  client_ca_file: ca.pem\n"
        } else {
            ""
        };
        let settings = parse(&tls_with(&format!("  client_auth_type: {name}\n{ca}"))).expect(name);
        assert_eq!(settings.tls.expect("TLS").client_auth, auth, "{name}");
    }
    assert!(parse_err(&tls_with("  client_auth_type: Always\n")).contains("\"Always\""));
    assert!(
        parse_err(&tls_with("  client_ca_file: ca.pem\n")).contains("without a client_auth_type")
    );
    assert!(parse_err(&tls_with(
        "  client_auth_type: RequireAndVerifyClientCert\n"
    ))
    .contains("needs client_ca_file"));
    assert!(parse_err(&tls_with(
        "  client_allowed_sans: [a]\n  client_auth_type: RequireAnyClientCert\n"
    ))
    .contains("client_allowed_sans is not supported"));
}

#[test]
fn tls_versions_rustls_lacks_are_refused_clearly() {
    for old in ["TLS10", "TLS11"] {
        let message = parse_err(&tls_with(&format!("  min_version: {old}\n")));
        assert!(message.contains("TLS12 and TLS13 only"), "{message}");
    }
    assert!(parse_err(&tls_with("  max_version: TLS14\n")).contains("unknown TLS version"));
    assert!(
        parse_err(&tls_with("  min_version: TLS13\n  max_version: TLS12\n"))
            .contains("min_version is above max_version")
    );
    assert!(parse_err(&tls_with("  cipher_suites: [TLS_MADE_UP]\n")).contains("unknown cipher"));
    assert!(parse_err(&tls_with("  curve_preferences: [CurveP999]\n")).contains("unknown curve"));
}

// ---- through a handshake --------------------------------------------------------------

#[test]
fn a_plain_tls_server_presents_its_certificate_and_asks_none_of_the_client() {
    let server = server_config(TLS);
    let done = handshake(server.clone(), default_client(None)).expect("handshake");
    assert_eq!(done.version, rustls::ProtocolVersion::TLSv1_3);
    assert_eq!(done.server_cert, certs("server.pem")[0].to_vec());
    // A client with a certificate is not asked for it.
    handshake(server, default_client(Some("client"))).expect("handshake");
}

#[test]
fn each_client_auth_type_takes_and_refuses_what_go_does() {
    // For each type: no client certificate, one from the CA, one from a rogue CA.
    let cases = [
        ("RequestClientCert", [true, true, true]),
        ("RequireAnyClientCert", [false, true, true]),
        ("VerifyClientCertIfGiven", [true, true, false]),
        ("RequireAndVerifyClientCert", [false, true, false]),
    ];
    for (name, expected) in cases {
        let server = server_config(&tls_with(&format!(
            "  client_auth_type: {name}\n  client_ca_file: ca.pem\n"
        )));
        for (cert, ok) in [None, Some("client"), Some("rogue-client")]
            .into_iter()
            .zip(expected)
        {
            for versions in [
                &[&rustls::version::TLS12][..],
                &[&rustls::version::TLS13][..],
            ] {
                let result = handshake(server.clone(), client(cert, versions, &[]));
                assert_eq!(
                    result.is_ok(),
                    ok,
                    "{name} with client certificate {cert:?} over {versions:?}: {result:?}"
                );
            }
        }
    }
}

#[test]
fn min_and_max_version_bound_the_protocol() {
    let tls13 = server_config(&tls_with("  min_version: TLS13\n"));
    assert!(handshake(tls13.clone(), client(None, &[&rustls::version::TLS12], &[])).is_err());
    assert_eq!(
        handshake(tls13, default_client(None)).expect("1.3").version,
        rustls::ProtocolVersion::TLSv1_3
    );
    let tls12 = server_config(&tls_with("  max_version: TLS12\n"));
    assert_eq!(
        handshake(tls12.clone(), default_client(None))
            .expect("1.2")
            .version,
        rustls::ProtocolVersion::TLSv1_2
    );
    assert!(handshake(tls12, client(None, &[&rustls::version::TLS13], &[])).is_err());
}

#[test]
fn alpn_offers_h2_unless_http2_is_off() {
    let both: &[&[u8]] = &[b"h2", b"http/1.1"];
    let on = server_config(TLS);
    let done = handshake(on, client(None, rustls::DEFAULT_VERSIONS, both)).expect("h2");
    assert_eq!(done.alpn.as_deref(), Some(&b"h2"[..]));
    let off = server_config(&format!("{TLS}http_server_config:\n  http2: false\n"));
    let done = handshake(off.clone(), client(None, rustls::DEFAULT_VERSIONS, both)).expect("h1");
    assert_eq!(done.alpn.as_deref(), Some(&b"http/1.1"[..]));
    // A client that insists on h2 alone finds no protocol in common.
    assert!(handshake(off, client(None, rustls::DEFAULT_VERSIONS, &[b"h2"])).is_err());
}

#[test]
fn cipher_suites_and_curves_map_onto_rustls_and_what_it_lacks_is_dropped_with_a_warning() {
    let (server, warnings) = server_config_warned(&tls_with(
        "  cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA, TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, TLS_AES_128_GCM_SHA256]\n  curve_preferences: [CurveP521, CurveP384]\n",
    ));
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings[0].contains("TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA"));
    assert!(warnings[1].contains("CurveP521"));
    let done = handshake(
        server.clone(),
        client(None, &[&rustls::version::TLS12], &[]),
    )
    .expect("1.2");
    assert_eq!(
        done.suite,
        rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
    );
    // TLS 1.3 still works with all its suites.
    handshake(server, default_client(None)).expect("1.3");

    let settings = parse(&tls_with(
        "  cipher_suites: [TLS_RSA_WITH_AES_128_GCM_SHA256]\n",
    ))
    .expect("names");
    let materials = settings.read_materials().expect("read");
    let message = tls::server_config(settings.tls.as_ref().expect("tls"), &materials, true)
        .expect_err("no TLS 1.2 suite left")
        .to_string();
    assert!(message.contains("none of the TLS 1.2 suites"), "{message}");
    // With TLS 1.3 only, TLS 1.2 suites do not matter.
    server_config_warned(&tls_with(
        "  min_version: TLS13\n  cipher_suites: [TLS_RSA_WITH_AES_128_GCM_SHA256]\n",
    ));
}

// ---- the source: read per connection, cached, rebuilt on change --------------------------

#[test]
fn no_file_is_open_plain_http() {
    let source = Source::open("--web.config.file", None).expect("no file");
    let security = source.current().expect("open");
    assert!(security.tls.is_none());
    assert!(!security.asks_credentials());
    assert_eq!(security.authorize(&HeaderMap::new()), Ok(()));
}

#[test]
fn a_bad_file_fails_the_start_naming_the_flag_file_and_problem() {
    let dir =
        Dir::new("tls_server_config:\n  cert_file: missing.pem\n  key_file: server-key.pem\n");
    let message = Source::open("--web.config.file", Some(&dir.path("web.yml")))
        .err()
        .expect("refused")
        .to_string();
    assert!(message.starts_with("--web.config.file="), "{message}");
    assert!(message.contains("web.yml"), "{message}");
    assert!(message.contains("missing.pem"), "{message}");
    let message = Source::open("--web.config.file", Some(&dir.path("absent.yml")))
        .err()
        .expect("refused")
        .to_string();
    assert!(message.contains("absent.yml"), "{message}");

    // A key that is not the certificate's.
    dir.write(
        "web.yml",
        b"tls_server_config:\n  cert_file: server.pem\n  key_file: renewed-key.pem\n",
    );
    let message = Source::open("--web.config.file", Some(&dir.path("web.yml")))
        .err()
        .expect("refused")
        .to_string();
    assert!(message.contains("do not go together"), "{message}");
    dir.write(
        "web.yml",
        b"tls_server_config:\n  cert_file: ca.pem\n  key_file: ca.pem\n",
    );
    let message = Source::open("--web.config.file", Some(&dir.path("web.yml")))
        .err()
        .expect("refused")
        .to_string();
    assert!(message.contains("no PEM private key"), "{message}");
}

#[test]
fn unchanged_files_reuse_what_was_built_and_a_renewed_certificate_is_picked_up() {
    let dir = Dir::new(TLS);
    let source = dir.source();
    assert!(source.tls());
    let first = source.current().expect("valid");
    let again = source.current().expect("valid");
    assert!(
        Arc::ptr_eq(&first, &again),
        "nothing changed: nothing rebuilt"
    );
    // The same bytes written again change nothing.
    dir.write(
        "server.pem",
        &std::fs::read(testdata("server.pem")).expect("read"),
    );
    assert!(Arc::ptr_eq(&first, &source.current().expect("valid")));

    // The certificate and key renewed in place.
    dir.write(
        "server.pem",
        &std::fs::read(testdata("renewed.pem")).expect("read"),
    );
    dir.write(
        "server-key.pem",
        &std::fs::read(testdata("renewed-key.pem")).expect("read"),
    );
    let renewed = source.current().expect("valid");
    assert!(!Arc::ptr_eq(&first, &renewed));
    let config = renewed.tls.as_ref().expect("TLS").config().clone();
    let done = handshake(config, default_client(None)).expect("handshake");
    assert_eq!(done.server_cert, certs("renewed.pem")[0].to_vec());
    // Connections already made keep the configuration they had.
    let old = first.tls.as_ref().expect("TLS").config().clone();
    assert_eq!(
        handshake(old, default_client(None))
            .expect("handshake")
            .server_cert,
        certs("server.pem")[0].to_vec()
    );
}

#[test]
fn a_file_gone_bad_is_an_error_until_fixed_and_tls_cannot_be_switched_off() {
    let dir = Dir::new(TLS);
    let source = dir.source();
    let good = source.current().expect("valid");
    // Half a renewal: the new certificate with the old key.
    dir.write(
        "server.pem",
        &std::fs::read(testdata("renewed.pem")).expect("read"),
    );
    assert!(source.current().is_err());
    assert!(source.current_or_log().is_none());
    dir.write(
        "server.pem",
        &std::fs::read(testdata("server.pem")).expect("read"),
    );
    let fixed = source.current_or_log().expect("fixed");
    assert_eq!(
        fixed.tls.as_ref().expect("TLS").config().alpn_protocols,
        good.tls.as_ref().expect("TLS").config().alpn_protocols
    );
    dir.write("web.yml", b"tls_server_config: [\n");
    assert!(source
        .current()
        .expect_err("bad YAML")
        .to_string()
        .contains("invalid YAML"));
    std::fs::remove_file(dir.path("web.yml")).expect("rm");
    assert!(source
        .current()
        .expect_err("gone")
        .to_string()
        .contains("cannot read"));
    dir.write("web.yml", b"basic_auth_users: {}\n");
    let message = source.current().expect_err("TLS off").to_string();
    assert!(message.contains("no longer configures it"), "{message}");

    let plain = Dir::new("");
    let source = plain.source();
    assert!(!source.tls());
    plain.write("web.yml", TLS.as_bytes());
    let message = source.current().expect_err("TLS on").to_string();
    assert!(message.contains("now configures TLS"), "{message}");
}

fn basic(user: &str, password: &str) -> HeaderMap {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let mut headers = HeaderMap::new();
    headers.insert(
        hyper::header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Basic {encoded}")).expect("header"),
    );
    headers
}

const ALICE: &str =
    "basic_auth_users:\n  alice: $2y$04$E0/GAwhGAnB/nCaLNV.k4uvLxl3aCZVnXDciecV5E5p3V8nWqhjOS\n";

#[test]
fn basic_auth_asks_every_request_for_a_users_password() {
    let dir = Dir::new(ALICE);
    let security = dir.source().current().expect("valid");
    assert!(security.tls.is_none());
    assert!(security.asks_credentials());
    assert_eq!(security.authorize(&basic("alice", "secret")), Ok(()));
    for refused in [
        basic("alice", "wrong"),
        basic("bob", "secret"),
        basic("", ""),
        HeaderMap::new(),
    ] {
        assert_eq!(security.authorize(&refused), Err(Refusal::Unauthorized));
    }
    let mut headers = HeaderMap::new();
    Refusal::Unauthorized.add_headers(&mut headers);
    assert_eq!(headers[WWW_AUTHENTICATE], "Basic");
    assert_eq!(Refusal::Unauthorized.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn admit_checks_off_the_runtime_and_answers_a_known_password_from_the_cache() {
    let dir = Dir::new(ALICE);
    let source = dir.source();
    let security = source.current().expect("valid");
    assert_eq!(security.admit(&basic("alice", "secret")).await, Ok(()));
    assert_eq!(
        security.admit(&basic("alice", "nope")).await,
        Err(Refusal::Unauthorized)
    );
    assert_eq!(source.auth_cache.len(), 1);
    // A new version of the file (a header added) keeps what was verified.
    dir.write(
        "web.yml",
        format!("{ALICE}http_server_config:\n  headers:\n    X-Frame-Options: deny\n").as_bytes(),
    );
    let changed = source.current().expect("valid");
    assert!(!Arc::ptr_eq(&security, &changed));
    let auth = changed.auth.as_ref().expect("users");
    assert!(
        auth.cached(&basic_auth::Credentials::from_headers(&basic("alice", "secret")).expect("c"))
    );
}

#[tokio::test]
async fn a_flood_of_wrong_passwords_waits_in_a_bounded_queue() {
    let dir = Dir::new(ALICE);
    let security = dir.source().current().expect("valid");
    let auth = security.auth.as_ref().expect("users");
    // The turn held here while every request arrives: `MAX_WAITING` of them
    // wait for it, the rest are refused at once.
    let held = auth.turn().await.expect("a turn");
    let mut checks = tokio::task::JoinSet::new();
    for i in 0..basic_auth::MAX_WAITING + 20 {
        let (security, headers) = (security.clone(), basic("alice", &format!("wrong-{i}")));
        checks.spawn(async move { security.admit(&headers).await });
    }
    // On this one-thread runtime, a yield lets every spawned request run
    // up to its wait.
    for _ in 0..100 {
        tokio::task::yield_now().await;
        if checks.len() == basic_auth::MAX_WAITING {
            break;
        }
    }
    assert_eq!(auth.waiting(), basic_auth::MAX_WAITING);
    let mut refused = 0;
    while let Some(answer) = checks.try_join_next() {
        assert_eq!(answer.expect("task"), Err(Refusal::TooManyRequests));
        refused += 1;
    }
    assert_eq!(refused, 20);
    drop(held);
    let answers = checks.join_all().await;
    assert!(answers.iter().all(|a| *a == Err(Refusal::Unauthorized)));
    assert_eq!(answers.len(), basic_auth::MAX_WAITING);
    // Nobody waits any more, and the right password is checked.
    assert_eq!(auth.waiting(), 0);
    assert_eq!(security.admit(&basic("alice", "secret")).await, Ok(()));
}

#[test]
fn the_rate_limit_refuses_past_its_burst() {
    let dir = Dir::new("rate_limit:\n  burst: 2\n  interval: 1h\n");
    let security = dir.source().current().expect("valid");
    assert_eq!(security.authorize(&HeaderMap::new()), Ok(()));
    assert_eq!(security.authorize(&HeaderMap::new()), Ok(()));
    assert_eq!(
        security.authorize(&HeaderMap::new()),
        Err(Refusal::TooManyRequests)
    );
    assert_eq!(
        parse("rate_limit:\n  burst: 5\n")
            .expect("no interval")
            .rate_limit,
        None
    );
    assert!(parse_err("rate_limit:\n  interval: 1s\n").contains("burst"));
    assert!(
        parse_err("rate_limit:\n  burst: 1\n  interval: soon\n").contains("rate_limit.interval")
    );
}
