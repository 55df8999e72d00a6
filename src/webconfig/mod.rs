//! The web configuration file of the Prometheus exporters
//! (`--web.config.file`, exporter-toolkit's format): TLS, basic auth, extra
//! response headers and a rate limit for one listener, so that the exporter
//! is secured the way every other exporter is, with the same file.
//!
//! `mod.rs` reads and checks the file ([`Settings`]) and keeps what one
//! listener currently applies ([`Source`], [`Security`]); `tls.rs` turns the
//! TLS part into a rustls `ServerConfig`; `basic_auth.rs` checks
//! `Authorization` headers against bcrypt hashes.
//!
//! As exporter-toolkit does, the file is read again for each new connection,
//! so a renewed certificate is used without a restart. What is built from it
//! (the rustls configuration above all) is rebuilt only when the bytes of the
//! file, or of a certificate, key or CA file it names, changed. The file is
//! checked at start (a bad one stops the start); a file that goes bad while
//! running refuses new connections until it is fixed.

mod basic_auth;
mod tls;

use basic_auth::{AuthCache, BasicAuth, Credentials};
use hyper::header::{HeaderName, HeaderValue, WWW_AUTHENTICATE};
use hyper::{HeaderMap, StatusCode};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub use tls::ClientAuth;

// ---- the file as written ------------------------------------------------------

/// The file, key by key as exporter-toolkit reads it; any other key is an
/// error (exporter-toolkit reads it with strict YAML).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    tls_server_config: Option<TlsFile>,
    http_server_config: Option<HttpFile>,
    rate_limit: Option<RateLimitFile>,
    basic_auth_users: Option<BTreeMap<String, String>>,
}

/// `tls_server_config`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert: Option<String>,
    key: Option<String>,
    client_ca: Option<String>,
    cert_file: Option<String>,
    key_file: Option<String>,
    client_ca_file: Option<String>,
    client_auth_type: Option<String>,
    cipher_suites: Option<Vec<String>>,
    curve_preferences: Option<Vec<String>>,
    min_version: Option<String>,
    max_version: Option<String>,
    prefer_server_cipher_suites: Option<bool>,
    client_allowed_sans: Option<Vec<String>>,
}

/// `http_server_config`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpFile {
    http2: Option<bool>,
    headers: Option<BTreeMap<String, String>>,
}

/// `rate_limit`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimitFile {
    burst: Option<u32>,
    interval: Option<String>,
}

/// The headers `http_server_config.headers` may set, and for some the only
/// values allowed (exporter-toolkit's list, kept fixed on purpose so that
/// every exporter offers the same).
const ALLOWED_HEADERS: [(&str, &[&str]); 5] = [
    ("Strict-Transport-Security", &[]),
    ("X-Content-Type-Options", &["nosniff"]),
    ("X-Frame-Options", &["deny", "sameorigin"]),
    ("X-XSS-Protection", &[]),
    ("Content-Security-Policy", &[]),
];

// ---- the file, checked --------------------------------------------------------

/// A problem with the file or one it names, said in words that name the key
/// or file at fault (never a password, hash or key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

fn error(message: impl Into<String>) -> Error {
    Error(message.into())
}

/// PEM text, inline in the file or in a file it names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Material {
    Inline(String),
    File(PathBuf),
}

impl Material {
    /// `file` (relative to the configuration's directory) if set, else
    /// `inline`, as exporter-toolkit prefers; an empty string is unset.
    fn pick(file: &Option<String>, inline: &Option<String>, dir: &Path) -> Option<Material> {
        match (nonempty(file), nonempty(inline)) {
            (Some(path), _) => Some(Material::File(dir.join(path))),
            (None, Some(text)) => Some(Material::Inline(text.to_owned())),
            (None, None) => None,
        }
    }

    /// The bytes; `what` names the key for an error.
    fn read(&self, what: &str) -> Result<Vec<u8>, Error> {
        match self {
            Material::Inline(text) => Ok(text.as_bytes().to_vec()),
            Material::File(path) => std::fs::read(path).map_err(|e| {
                error(format!(
                    "tls_server_config: cannot read {what} {}: {e}",
                    path.display()
                ))
            }),
        }
    }

    /// How an error names it: the key and, for a file, its path.
    fn describe(&self, file_key: &str, inline_key: &str) -> String {
        match self {
            Material::Inline(_) => inline_key.to_owned(),
            Material::File(path) => format!("{file_key} {}", path.display()),
        }
    }
}

fn nonempty(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|v| !v.is_empty())
}

/// A TLS protocol version rustls offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum TlsVersion {
    Tls12,
    Tls13,
}

impl TlsVersion {
    fn parse(key: &str, text: &str) -> Result<TlsVersion, Error> {
        match text {
            "TLS12" => Ok(TlsVersion::Tls12),
            "TLS13" => Ok(TlsVersion::Tls13),
            "TLS10" | "TLS11" => Err(error(format!(
                "tls_server_config.{key}: {text} is not offered: this exporter's TLS (rustls) speaks TLS12 and TLS13 only"
            ))),
            other => Err(error(format!(
                "tls_server_config.{key}: unknown TLS version {other:?} (TLS12 or TLS13)"
            ))),
        }
    }
}

/// What `tls_server_config` asks for, checked, before any file is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TlsSettings {
    cert: Material,
    key: Material,
    client_ca: Option<Material>,
    pub(crate) client_auth: ClientAuth,
    pub(crate) min_version: TlsVersion,
    pub(crate) max_version: TlsVersion,
    /// `cipher_suites` as written (Go's names), `None` for the defaults.
    pub(crate) cipher_suites: Option<Vec<String>>,
    /// `curve_preferences` as written, `None` for the defaults.
    pub(crate) curves: Option<Vec<String>>,
    pub(crate) prefer_server_cipher_suites: bool,
}

/// `rate_limit`: `burst` requests at once, one more each `interval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RateLimit {
    burst: u32,
    interval: Duration,
}

/// The whole file, checked: nothing left that can fail but reading the
/// files it names and what they hold.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Settings {
    tls: Option<TlsSettings>,
    http2: bool,
    headers: Vec<(HeaderName, HeaderValue)>,
    /// User name to bcrypt hash.
    users: BTreeMap<String, String>,
    rate_limit: Option<RateLimit>,
}

impl Settings {
    /// Reads the YAML text of a file in `dir` (relative paths are from there).
    fn parse(text: &str, dir: &Path) -> Result<Settings, Error> {
        Settings::check(parse_yaml(text)?, dir)
    }

    fn check(file: File, dir: &Path) -> Result<Settings, Error> {
        let http = file.http_server_config.unwrap_or_default();
        let headers = check_headers(http.headers.unwrap_or_default())?;
        let users = file.basic_auth_users.unwrap_or_default();
        for (user, hash) in &users {
            basic_auth::check_hash(hash)
                .map_err(|why| error(format!("basic_auth_users: user {user:?}: {why}")))?;
        }
        let rate_limit = match file.rate_limit {
            None => None,
            Some(limit) => check_rate_limit(limit)?,
        };
        let tls = match file.tls_server_config {
            None => None,
            Some(tls) => check_tls(tls, dir)?,
        };
        Ok(Settings {
            tls,
            http2: http.http2.unwrap_or(true),
            headers,
            users,
            rate_limit,
        })
    }

    /// The PEM texts the TLS part names (certificate, key, client CA), read now.
    fn read_materials(&self) -> Result<Materials, Error> {
        let Some(tls) = &self.tls else {
            return Ok(Materials::default());
        };
        Ok(Materials {
            cert: tls.cert.read("cert_file")?,
            key: tls.key.read("key_file")?,
            client_ca: match &tls.client_ca {
                Some(ca) => Some(ca.read("client_ca_file")?),
                None => None,
            },
        })
    }
}

/// The YAML text as a [`File`]: strict (unknown and repeated keys are
/// errors); an empty document is an empty configuration. Errors carry the
/// line and column but no snippet of the text, which may hold a key.
fn parse_yaml(text: &str) -> Result<File, Error> {
    let mut options = serde_saphyr::Options::default();
    options.with_snippet = false;
    serde_saphyr::from_str_with_options(text, options).map_err(|e| {
        // The parser's advice is for programmers, not for the file's author.
        let message = e
            .to_string()
            .replace(", set DuplicateKeyPolicy in Options if acceptable", "");
        error(format!("invalid YAML: {message}"))
    })
}

fn check_headers(
    headers: BTreeMap<String, String>,
) -> Result<Vec<(HeaderName, HeaderValue)>, Error> {
    let mut checked = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        let Some((_, allowed)) = ALLOWED_HEADERS.iter().find(|(n, _)| *n == name) else {
            let names: Vec<&str> = ALLOWED_HEADERS.iter().map(|(n, _)| *n).collect();
            return Err(error(format!(
                "http_server_config.headers: the header {name:?} can not be configured (only {})",
                names.join(", ")
            )));
        };
        if !allowed.is_empty() && !allowed.contains(&value.as_str()) {
            return Err(error(format!(
                "http_server_config.headers: invalid value for {name}: expected one of {allowed:?}, got {value:?}"
            )));
        }
        let header_name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|e| error(format!("http_server_config.headers: {name}: {e}")))?;
        let header_value = HeaderValue::from_str(&value).map_err(|_| {
            error(format!(
                "http_server_config.headers: the value of {name} is not a valid header value"
            ))
        })?;
        checked.push((header_name, header_value));
    }
    Ok(checked)
}

fn check_rate_limit(limit: RateLimitFile) -> Result<Option<RateLimit>, Error> {
    let interval = match nonempty(&limit.interval) {
        None => Duration::ZERO,
        Some(text) => humantime::parse_duration(text)
            .map_err(|e| error(format!("rate_limit.interval: {text:?}: {e}")))?,
    };
    if interval.is_zero() {
        // As in exporter-toolkit: no interval, no limit.
        return Ok(None);
    }
    let burst = limit.burst.unwrap_or(0);
    if burst == 0 {
        return Err(error(
            "rate_limit.burst must be at least 1 when rate_limit.interval is set (0 would refuse every request)",
        ));
    }
    Ok(Some(RateLimit { burst, interval }))
}

/// `tls_server_config`, checked; `None` when it configures no TLS (no
/// certificate, key, CA or client auth type set: the listener is plain HTTP).
fn check_tls(tls: TlsFile, dir: &Path) -> Result<Option<TlsSettings>, Error> {
    let enabled = [
        &tls.cert,
        &tls.key,
        &tls.cert_file,
        &tls.key_file,
        &tls.client_ca,
        &tls.client_ca_file,
        &tls.client_auth_type,
    ]
    .into_iter()
    .any(|v| nonempty(v).is_some());
    if !enabled {
        return Ok(None);
    }
    if tls.client_allowed_sans.is_some() {
        return Err(error(
            "tls_server_config.client_allowed_sans is not supported by this exporter",
        ));
    }
    let cert = Material::pick(&tls.cert_file, &tls.cert, dir)
        .ok_or_else(|| error("tls_server_config: missing one of cert or cert_file"))?;
    let key = Material::pick(&tls.key_file, &tls.key, dir)
        .ok_or_else(|| error("tls_server_config: missing one of key or key_file"))?;
    let client_ca = Material::pick(&tls.client_ca_file, &tls.client_ca, dir);
    let client_auth = ClientAuth::parse(nonempty(&tls.client_auth_type).unwrap_or(""))?;
    if client_ca.is_some() && client_auth == ClientAuth::NoClientCert {
        return Err(error(
            "tls_server_config: client CAs have been configured without a client_auth_type",
        ));
    }
    if client_auth.verifies() && client_ca.is_none() {
        return Err(error(format!(
            "tls_server_config: client_auth_type {} needs client_ca_file (or client_ca) to verify client certificates with",
            client_auth.as_str()
        )));
    }
    let min_version = match nonempty(&tls.min_version) {
        Some(v) => TlsVersion::parse("min_version", v)?,
        None => TlsVersion::Tls12,
    };
    let max_version = match nonempty(&tls.max_version) {
        Some(v) => TlsVersion::parse("max_version", v)?,
        None => TlsVersion::Tls13,
    };
    if min_version > max_version {
        return Err(error("tls_server_config: min_version is above max_version"));
    }
    let settings = TlsSettings {
        cert,
        key,
        client_ca,
        client_auth,
        min_version,
        max_version,
        cipher_suites: tls.cipher_suites.filter(|s| !s.is_empty()),
        curves: tls.curve_preferences.filter(|c| !c.is_empty()),
        prefer_server_cipher_suites: tls.prefer_server_cipher_suites.unwrap_or(true),
    };
    // The names are checked now, so that a start with a bad one fails.
    tls::check_names(&settings)?;
    Ok(Some(settings))
}

/// The PEM texts a configuration's TLS part names, as read.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Materials {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

// ---- what one listener applies ------------------------------------------------------

/// Why a request is not served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Missing or wrong credentials: 401 with `WWW-Authenticate: Basic`.
    Unauthorized,
    /// Past `rate_limit`: 429.
    TooManyRequests,
}

impl Refusal {
    pub fn status(self) -> StatusCode {
        match self {
            Refusal::Unauthorized => StatusCode::UNAUTHORIZED,
            Refusal::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// The response's body text.
    pub fn body(self) -> &'static str {
        match self {
            Refusal::Unauthorized => "Unauthorized\n",
            Refusal::TooManyRequests => "Too Many Requests\n",
        }
    }

    /// Sets what the refusal's response must carry besides the status.
    pub fn add_headers(self, headers: &mut HeaderMap) {
        if self == Refusal::Unauthorized {
            headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Basic"));
        }
    }
}

/// `rate_limit` in force: a token bucket that starts full.
#[derive(Debug)]
struct RateLimiter {
    limit: RateLimit,
    /// Tokens left and when they were counted.
    bucket: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    fn new(limit: RateLimit) -> RateLimiter {
        RateLimiter {
            limit,
            bucket: Mutex::new((f64::from(limit.burst), Instant::now())),
        }
    }

    fn allow(&self) -> bool {
        let mut bucket = lock(&self.bucket);
        let now = Instant::now();
        let earned = now.duration_since(bucket.1).as_secs_f64() / self.limit.interval.as_secs_f64();
        let tokens = (bucket.0 + earned).min(f64::from(self.limit.burst));
        if tokens >= 1.0 {
            *bucket = (tokens - 1.0, now);
            true
        } else {
            *bucket = (tokens, now);
            false
        }
    }
}

/// What a listener applies to a connection and its requests, built from one
/// version of the file.
pub struct Security {
    /// The TLS handshake, when the file configures TLS.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Whether HTTP/2 is offered (by ALPN, over TLS).
    pub http2: bool,
    auth: Option<BasicAuth>,
    headers: Vec<(HeaderName, HeaderValue)>,
    limiter: Option<RateLimiter>,
}

impl fmt::Debug for Security {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Security")
            .field("tls", &self.tls.is_some())
            .field("http2", &self.http2)
            .field("users", &self.auth.as_ref().map_or(0, BasicAuth::users))
            .field("headers", &self.headers)
            .field("limiter", &self.limiter)
            .finish()
    }
}

impl Security {
    /// No file: plain HTTP, no credentials asked, no headers added.
    fn open() -> Security {
        Security {
            tls: None,
            http2: true,
            auth: None,
            headers: Vec::new(),
            limiter: None,
        }
    }

    /// Builds what `settings` asks for from the files it names (already read);
    /// the warnings to log (TLS options rustls does not have).
    fn build(
        settings: &Settings,
        materials: &Materials,
        cache: &Arc<AuthCache>,
    ) -> Result<(Security, Vec<String>), Error> {
        let (tls, warnings) = match &settings.tls {
            Some(tls) => {
                let (config, warnings) = tls::server_config(tls, materials, settings.http2)?;
                (
                    Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))),
                    warnings,
                )
            }
            None => (None, Vec::new()),
        };
        let auth =
            (!settings.users.is_empty()).then(|| BasicAuth::new(&settings.users, cache.clone()));
        Ok((
            Security {
                tls,
                http2: settings.http2,
                auth,
                headers: settings.headers.clone(),
                limiter: settings.rate_limit.map(RateLimiter::new),
            },
            warnings,
        ))
    }

    /// Whether requests must carry basic auth credentials.
    pub fn asks_credentials(&self) -> bool {
        self.auth.is_some()
    }

    /// [`Security::admit`] run on the calling thread (a bcrypt check of
    /// tens of milliseconds may run here), for tests.
    #[cfg(test)]
    pub fn authorize(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        if self.limiter.as_ref().is_some_and(|l| !l.allow()) {
            return Err(Refusal::TooManyRequests);
        }
        let Some(auth) = &self.auth else {
            return Ok(());
        };
        let credentials = Credentials::from_headers(headers).ok_or(Refusal::Unauthorized)?;
        if auth.check(&credentials) {
            Ok(())
        } else {
            Err(Refusal::Unauthorized)
        }
    }

    /// Whether a request with these headers is served: the rate limit, then
    /// the credentials. Credentials verified before are answered from the
    /// cache at once; a bcrypt check runs on a blocking thread.
    pub async fn admit(self: &Arc<Self>, headers: &HeaderMap) -> Result<(), Refusal> {
        if self.limiter.as_ref().is_some_and(|l| !l.allow()) {
            return Err(Refusal::TooManyRequests);
        }
        let Some(auth) = &self.auth else {
            return Ok(());
        };
        let credentials = Credentials::from_headers(headers).ok_or(Refusal::Unauthorized)?;
        if auth.cached(&credentials) {
            return Ok(());
        }
        // One check at a time, the others waiting here rather than queued
        // on the blocking threads; too many waiting are refused at once.
        let Some(turn) = auth.turn().await else {
            return Err(Refusal::TooManyRequests);
        };
        let security = self.clone();
        let checked = tokio::task::spawn_blocking(move || {
            let _turn = turn;
            security
                .auth
                .as_ref()
                .is_some_and(|auth| auth.check(&credentials))
        })
        .await;
        match checked {
            Ok(true) => Ok(()),
            _ => Err(Refusal::Unauthorized),
        }
    }

    /// Adds the configured headers (`http_server_config.headers`) to a response's.
    pub fn add_headers(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.headers {
            headers.insert(name.clone(), value.clone());
        }
    }
}

/// One version of the file and what was built from it.
struct Loaded {
    /// SHA-256 of the file's bytes.
    file_digest: [u8; 32],
    settings: Arc<Settings>,
    /// SHA-256 of the file's and every file it names.
    inputs_digest: [u8; 32],
    security: Arc<Security>,
}

/// How often, at most, the same error of a file gone bad is logged.
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The configuration file of one listener: read again for each connection,
/// and rebuilt when what it names changed.
pub struct Source {
    /// The flag that named it, for messages.
    flag: &'static str,
    path: Option<PathBuf>,
    /// Whether the listener serves TLS: decided at start, like the
    /// listener's protocol (a file that changes it later is an error).
    tls: bool,
    loaded: Mutex<Option<Loaded>>,
    /// With no file.
    open: Arc<Security>,
    /// Verified credentials, kept across versions of the file.
    auth_cache: Arc<AuthCache>,
    /// The last error logged and when, to log a lasting one rarely.
    last_error: Mutex<Option<(String, Instant)>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    hasher.finalize().into()
}

impl Source {
    /// Reads and checks the file named by `flag` (none: plain HTTP, open to
    /// all). An invalid file is an error that names the flag, file and problem.
    pub fn open(flag: &'static str, path: Option<&Path>) -> anyhow::Result<Source> {
        let mut source = Source {
            flag,
            path: path.map(Path::to_owned),
            tls: false,
            loaded: Mutex::new(None),
            open: Arc::new(Security::open()),
            auth_cache: Arc::new(AuthCache::default()),
            last_error: Mutex::new(None),
        };
        let Some(path) = path else {
            return Ok(source);
        };
        let security = source
            .load(true)
            .map_err(|e| anyhow::anyhow!("{flag}={}: {e}", path.display()))?;
        source.tls = security.tls.is_some();
        tracing::info!(
            flag,
            path = %path.display(),
            tls = source.tls,
            http2 = security.http2,
            basic_auth = security.asks_credentials(),
            "web configuration read"
        );
        Ok(source)
    }

    /// Whether a file was named (without one, nothing is ever read).
    pub fn has_file(&self) -> bool {
        self.path.is_some()
    }

    /// Whether the listener serves TLS.
    pub fn tls(&self) -> bool {
        self.tls
    }

    /// What applies to a new connection now: the file read again, and rebuilt
    /// when it or a file it names changed.
    pub fn current(&self) -> Result<Arc<Security>, Error> {
        if self.path.is_none() {
            return Ok(self.open.clone());
        }
        self.load(false)
    }

    /// [`Source::current`], logging an error (the same one at most every
    /// 10 s) and its end; `None` while the file is bad.
    pub fn current_or_log(&self) -> Option<Arc<Security>> {
        match self.current() {
            Ok(security) => {
                let mut last = lock(&self.last_error);
                if last.take().is_some() {
                    tracing::info!(flag = self.flag, "web configuration valid again");
                }
                Some(security)
            }
            Err(e) => {
                let message = e.to_string();
                let mut last = lock(&self.last_error);
                let due = match &*last {
                    Some((logged, at)) => *logged != message || at.elapsed() >= ERROR_LOG_INTERVAL,
                    None => true,
                };
                if due {
                    tracing::error!(
                        flag = self.flag,
                        path = %self.path.as_deref().unwrap_or(Path::new("")).display(),
                        error = %message,
                        "web configuration invalid: refusing new connections until it is fixed"
                    );
                    *last = Some((message, Instant::now()));
                }
                None
            }
        }
    }

    fn load(&self, first: bool) -> Result<Arc<Security>, Error> {
        let Some(path) = &self.path else {
            return Ok(self.open.clone());
        };
        let bytes = std::fs::read(path)
            .map_err(|e| error(format!("cannot read {}: {e}", path.display())))?;
        let file_digest = sha256(&[&bytes]);
        let mut loaded = lock(&self.loaded);
        let settings = match &*loaded {
            Some(l) if l.file_digest == file_digest => l.settings.clone(),
            _ => {
                let text =
                    std::str::from_utf8(&bytes).map_err(|_| error("the file is not UTF-8 text"))?;
                let dir = path.parent().unwrap_or(Path::new("."));
                Arc::new(Settings::parse(text, dir)?)
            }
        };
        let materials = settings.read_materials()?;
        let inputs_digest = sha256(&[
            &file_digest,
            &materials.cert,
            &materials.key,
            materials.client_ca.as_deref().unwrap_or(b"-"),
        ]);
        if let Some(l) = &*loaded {
            if l.inputs_digest == inputs_digest {
                return Ok(l.security.clone());
            }
        }
        if !first && settings.tls.is_some() != self.tls {
            return Err(error(if self.tls {
                "the listener serves TLS, and the file no longer configures it (restart to serve plain HTTP)"
            } else {
                "the listener serves plain HTTP, and the file now configures TLS (restart to serve TLS)"
            }));
        }
        let (security, warnings) = Security::build(&settings, &materials, &self.auth_cache)?;
        for warning in warnings {
            tracing::warn!(flag = self.flag, "web configuration: {warning}");
        }
        if !first {
            tracing::info!(
                flag = self.flag,
                tls = security.tls.is_some(),
                basic_auth = security.asks_credentials(),
                "web configuration changed: new connections use it"
            );
        }
        let security = Arc::new(security);
        *loaded = Some(Loaded {
            file_digest,
            settings,
            inputs_digest,
            security: security.clone(),
        });
        Ok(security)
    }
}

#[cfg(test)]
mod tests;
