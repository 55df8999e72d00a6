//! TLS for the tests of `--web.config.file`: certificates made by the real
//! `openssl` CLI (a CA, a server certificate for 127.0.0.1, a client
//! certificate from the CA, a rogue CA with a client certificate of its
//! own), and a blocking HTTPS client on rustls (the exporter's own TLS
//! stack, so no second one is pulled in) that tells what the handshake did:
//! the protocol version, the ALPN protocol, the server's certificate.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{
    ClientConfig, ClientConnection, RootCertStore, StreamOwned, SupportedProtocolVersion,
};

use super::tools::{require_tool, run_ok_in};

/// A temporary directory of certificates and keys, made with `openssl`:
/// `ca.pem`; `server.pem` / `server-key.pem` (CN `server`, for
/// 127.0.0.1); `client.pem` / `client-key.pem` (from the CA);
/// `rogue-ca.pem`; `rogue-client.pem` / `rogue-client-key.pem` (from the
/// rogue CA). More server certificates from the CA with [`Pki::server_cert`].
pub struct Pki {
    dir: tempfile::TempDir,
    openssl: PathBuf,
}

/// Serial numbers, distinct within the test binary.
fn next_serial() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let nanos = super::now_ns();
    format!("0x{:x}{:04x}", nanos, NEXT.fetch_add(1, Ordering::Relaxed))
}

impl Pki {
    pub fn new() -> Pki {
        let pki = Pki {
            dir: tempfile::tempdir().expect("temp dir"),
            openssl: require_tool("openssl"),
        };
        pki.ca("ca", "test CA");
        pki.ca("rogue-ca", "rogue CA");
        pki.server_cert("server", "server");
        pki.leaf("client", "ca", "client", "clientAuth", None);
        pki.leaf(
            "rogue-client",
            "rogue-ca",
            "rogue client",
            "clientAuth",
            None,
        );
        pki
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn openssl(&self, args: &[&str]) {
        run_ok_in(self.dir.path(), &self.openssl, args);
    }

    fn key(&self, name: &str) {
        self.openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            &format!("{name}-key.pem"),
        ]);
    }

    /// A self-signed CA `name.pem` (its key `name-key.pem`).
    fn ca(&self, name: &str, cn: &str) {
        self.key(name);
        self.openssl(&[
            "req",
            "-x509",
            "-new",
            "-key",
            &format!("{name}-key.pem"),
            "-subj",
            &format!("/CN={cn}"),
            "-days",
            "2",
            "-sha256",
            "-set_serial",
            &next_serial(),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-out",
            &format!("{name}.pem"),
        ]);
    }

    /// A certificate `name.pem` / `name-key.pem` signed by the CA `ca`.
    fn leaf(&self, name: &str, ca: &str, cn: &str, usage: &str, san: Option<&str>) {
        self.key(name);
        self.openssl(&[
            "req",
            "-new",
            "-key",
            &format!("{name}-key.pem"),
            "-subj",
            &format!("/CN={cn}"),
            "-out",
            &format!("{name}.csr"),
        ]);
        let mut ext = format!(
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage={usage}\n"
        );
        if let Some(san) = san {
            ext.push_str(&format!("subjectAltName={san}\n"));
        }
        std::fs::write(self.path(&format!("{name}.ext")), ext).expect("write extensions");
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}-key.pem"),
            "-set_serial",
            &next_serial(),
            "-days",
            "2",
            "-sha256",
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("{name}.pem"),
        ]);
    }

    /// A server certificate `name.pem` / `name-key.pem` from the CA, for
    /// 127.0.0.1 (`-addext`-style subjectAltName), with common name `cn`
    /// and a serial of its own.
    pub fn server_cert(&self, name: &str, cn: &str) {
        self.leaf(name, "ca", cn, "serverAuth", Some("IP:127.0.0.1"));
    }

    /// The DER bytes of the first certificate of `name.pem`.
    pub fn der(&self, name: &str) -> Vec<u8> {
        let certs = CertificateDer::pem_file_iter(self.path(&format!("{name}.pem")))
            .expect("pem file")
            .collect::<Result<Vec<_>, _>>()
            .expect("certificates");
        certs[0].to_vec()
    }

    /// What `openssl x509 -subject -serial` says of `name.pem`.
    pub fn describe(&self, name: &str) -> String {
        let out = run_ok_in(
            self.dir.path(),
            &self.openssl,
            &[
                "x509",
                "-in",
                &format!("{name}.pem"),
                "-noout",
                "-subject",
                "-serial",
            ],
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

/// A blocking HTTPS client: what it trusts, its client certificate, its
/// protocol versions and ALPN offer.
#[derive(Clone)]
pub struct TlsClient {
    trust: PathBuf,
    cert: Option<(PathBuf, PathBuf)>,
    versions: Vec<&'static SupportedProtocolVersion>,
    alpn: Vec<Vec<u8>>,
}

/// One answer over TLS, with what the handshake did.
#[derive(Debug, Clone)]
pub struct TlsResponse {
    pub status: u16,
    /// Names lower-cased.
    pub headers: BTreeMap<String, String>,
    pub body: String,
    pub handshake: Handshake,
}

impl TlsResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

/// What a handshake settled.
#[derive(Debug, Clone)]
pub struct Handshake {
    pub version: Option<rustls::ProtocolVersion>,
    pub alpn: Option<String>,
    /// The server's certificate (DER).
    pub server_cert: Vec<u8>,
}

/// A connection after its handshake, for several requests (keep-alive).
pub struct TlsConn {
    stream: StreamOwned<ClientConnection, TcpStream>,
}

fn certs(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .collect::<Result<Vec<_>, _>>()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

impl TlsClient {
    /// Trusting only the CA in `ca` (PEM), no client certificate, TLS 1.2
    /// and 1.3, offering `http/1.1` by ALPN.
    pub fn trusting(ca: &Path) -> TlsClient {
        TlsClient {
            trust: ca.to_owned(),
            cert: None,
            versions: rustls::DEFAULT_VERSIONS.to_vec(),
            alpn: vec![b"http/1.1".to_vec()],
        }
    }

    /// Presents the certificate `cert` with its key `key` when asked.
    pub fn with_cert(mut self, cert: &Path, key: &Path) -> TlsClient {
        self.cert = Some((cert.to_owned(), key.to_owned()));
        self
    }

    /// Speaks TLS 1.2 only.
    pub fn tls12_only(mut self) -> TlsClient {
        self.versions = vec![&rustls::version::TLS12];
        self
    }

    /// Offers these ALPN protocols.
    pub fn alpn(mut self, protocols: &[&str]) -> TlsClient {
        self.alpn = protocols.iter().map(|p| p.as_bytes().to_vec()).collect();
        self
    }

    fn config(&self) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        for cert in certs(&self.trust) {
            roots.add(cert).expect("a trust anchor");
        }
        let builder =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(&self.versions)
                .expect("protocol versions")
                .with_root_certificates(roots);
        let mut config = match &self.cert {
            Some((cert, key)) => builder
                .with_client_auth_cert(
                    certs(cert),
                    PrivateKeyDer::from_pem_file(key).expect("client key"),
                )
                .expect("client certificate"),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = self.alpn.clone();
        Arc::new(config)
    }

    /// Connects to 127.0.0.1:`port` and completes the handshake (on the
    /// client's side: in TLS 1.3 a server that refuses the client's
    /// certificate says so at the first read); why not, as text.
    pub fn connect(&self, port: u16) -> Result<TlsConn, String> {
        let tcp = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
        tcp.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("read timeout");
        let name = ServerName::try_from("127.0.0.1").expect("server name");
        let conn = ClientConnection::new(self.config(), name).map_err(|e| e.to_string())?;
        let mut stream = StreamOwned::new(conn, tcp);
        while stream.conn.is_handshaking() {
            stream
                .conn
                .complete_io(&mut stream.sock)
                .map_err(|e| format!("handshake: {e}"))?;
        }
        Ok(TlsConn { stream })
    }

    /// `GET path` over HTTP/2 (ALPN `h2` only, hyper's client): the
    /// status and the protocol version hyper saw.
    pub fn get_h2(&self, port: u16, path: &str) -> Result<(u16, hyper::Version), String> {
        let config = self.clone().alpn(&["h2"]).config();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let name = ServerName::try_from("127.0.0.1").expect("server name");
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            let (mut sender, conn) = hyper::client::conn::http2::handshake(
                hyper_util::rt::TokioExecutor::new(),
                hyper_util::rt::TokioIo::new(tls),
            )
            .await
            .map_err(|e| format!("HTTP/2: {e}"))?;
            tokio::spawn(conn);
            let request = hyper::Request::get(format!("https://127.0.0.1:{port}{path}"))
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .expect("request");
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| format!("request: {e}"))?;
            Ok((response.status().as_u16(), response.version()))
        })
    }

    /// One request on a connection of its own (`Connection: close`).
    pub fn request(
        &self,
        port: u16,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<TlsResponse, String> {
        self.connect(port)?
            .request(method, path, headers, body, false)
    }

    /// `GET path`.
    pub fn get(&self, port: u16, path: &str) -> Result<TlsResponse, String> {
        self.request(port, "GET", path, &[], None)
    }

    /// `GET path` with basic auth credentials.
    pub fn get_as(
        &self,
        port: u16,
        path: &str,
        user: &str,
        password: &str,
    ) -> Result<TlsResponse, String> {
        let auth = basic_auth(user, password);
        self.request(port, "GET", path, &[("Authorization", &auth)], None)
    }
}

/// The `Authorization` header value of basic auth.
pub fn basic_auth(user: &str, password: &str) -> String {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

impl TlsConn {
    /// What the handshake settled.
    pub fn handshake(&self) -> Handshake {
        Handshake {
            version: self.stream.conn.protocol_version(),
            alpn: self
                .stream
                .conn
                .alpn_protocol()
                .map(|p| String::from_utf8_lossy(p).into_owned()),
            server_cert: self
                .stream
                .conn
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.to_vec())
                .unwrap_or_default(),
        }
    }

    /// Sends one HTTP/1.1 request and reads its whole answer; with
    /// `keep_alive` the connection stays open for another.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        keep_alive: bool,
    ) -> Result<TlsResponse, String> {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        let body = body.unwrap_or_default();
        if !body.is_empty() || method == "POST" {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        if !keep_alive {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body);
        self.stream
            .write_all(&bytes)
            .and_then(|()| self.stream.flush())
            .map_err(|e| format!("write: {e}"))?;
        let (status, headers, body) = self.read_response()?;
        Ok(TlsResponse {
            status,
            headers,
            body,
            handshake: self.handshake(),
        })
    }

    fn read_response(&mut self) -> Result<(u16, BTreeMap<String, String>, String), String> {
        let mut data = Vec::new();
        let mut buf = [0u8; 8192];
        let mut head: Option<Head> = None;
        loop {
            if let Some(Head {
                status,
                headers,
                body_start,
                length: Some(length),
            }) = &head
            {
                if data.len() >= body_start + length {
                    let body = &data[*body_start..body_start + length];
                    let body = String::from_utf8_lossy(body).into_owned();
                    return Ok((*status, headers.clone(), body));
                }
            }
            let n = match self.stream.read(&mut buf) {
                Ok(n) => n,
                // No close_notify before the end: the end all the same.
                Err(e) if e.kind() == ErrorKind::UnexpectedEof && head.is_some() => 0,
                Err(e) => return Err(format!("read: {e}")),
            };
            if n == 0 {
                return match head {
                    Some(head) => {
                        let body = String::from_utf8_lossy(&data[head.body_start..]).into_owned();
                        Ok((head.status, head.headers, body))
                    }
                    None if data.is_empty() => Err("closed without an answer".to_owned()),
                    None => Err(format!(
                        "closed within the answer's head: {:?}",
                        String::from_utf8_lossy(&data)
                    )),
                };
            }
            data.extend_from_slice(&buf[..n]);
            if head.is_none() {
                head = parse_head(&data)?;
            }
        }
    }
}

/// An answer's head, once whole.
struct Head {
    status: u16,
    headers: BTreeMap<String, String>,
    /// Where the body starts in what was read.
    body_start: usize,
    /// `Content-Length`, if given.
    length: Option<usize>,
}

/// The answer's head, once `data` holds all of it.
fn parse_head(data: &[u8]) -> Result<Option<Head>, String> {
    let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&data[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not an HTTP status line: {status_line:?}"))?;
    let mut headers = BTreeMap::new();
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
        }
    }
    let length = headers.get("content-length").and_then(|v| v.parse().ok());
    Ok(Some(Head {
        status,
        headers,
        body_start: end + 4,
        length,
    }))
}
