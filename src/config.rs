//! Every command-line flag, in one place, in the Prometheus exporters' style
//! (`--web.listen-address`, `--storage.path`, …): the server's, the trace
//! export's and the `simulate` subcommand's. Every server flag can also be set
//! through an environment variable `LOADIMPACT_EXPORTER_<FLAG>`, with dots and
//! dashes as underscores (`--storage.redis-*` drop the `STORAGE_`).

use crate::clock::millis;
use crate::outcome::{Outcome, StatusTable};
use crate::state::Machine;
use clap::{Parser, Subcommand, ValueEnum};
use ipnet::IpNet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// Receives Load Impact (Grafana Cloud k6) webhooks and exports the test runs
/// as Prometheus metrics and OpenTelemetry spans.
#[derive(Debug, Clone, Parser)]
#[command(name = "loadimpact-exporter", version = crate::version::LONG, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Post a realistic stream of simulated runs to a running exporter.
    Simulate(SimulateArgs),
}

/// Where the state lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    Embedded,
    Redis,
}

/// A lease of at least a second (it is renewed every third of it).
fn parse_lease(text: &str) -> Result<Duration, String> {
    let lease = parse_duration(text)?;
    if lease < Duration::from_secs(1) {
        return Err("the lease must be at least 1s".into());
    }
    Ok(lease)
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Logfmt,
    Json,
}

/// The exporter's flags.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// Address to listen on for the metrics, API, probes and (unless
    /// `--webhook.listen-address` is set) the webhook.
    #[arg(
        long = "web.listen-address",
        env = "LOADIMPACT_EXPORTER_WEB_LISTEN_ADDRESS",
        default_value = "0.0.0.0:16565"
    )]
    pub listen_address: SocketAddr,

    /// A separate address for the webhook alone (to publish it through an
    /// Ingress while the metrics stay inside the cluster). When set, the
    /// webhook is served only there, and `--web.listen-address` serves the
    /// metrics, API and probes only.
    #[arg(
        long = "webhook.listen-address",
        env = "LOADIMPACT_EXPORTER_WEBHOOK_LISTEN_ADDRESS"
    )]
    pub webhook_listen_address: Option<SocketAddr>,

    /// The most connections each listener keeps open at once; past it new
    /// connections wait in the kernel's backlog.
    #[arg(
        long = "web.max-connections",
        env = "LOADIMPACT_EXPORTER_WEB_MAX_CONNECTIONS",
        default_value_t = 512,
        value_parser = clap::value_parser!(u32).range(1..=1_000_000)
    )]
    pub max_connections: u32,

    /// The longest a request's head (request line and headers) may take to
    /// arrive; a slower connection is closed.
    #[arg(
        long = "web.read-header-timeout",
        env = "LOADIMPACT_EXPORTER_WEB_READ_HEADER_TIMEOUT",
        default_value = "10s",
        value_parser = parse_duration
    )]
    pub read_header_timeout: Duration,

    /// The longest a request's body may take to arrive; a slower one is
    /// answered 408.
    #[arg(
        long = "web.read-timeout",
        env = "LOADIMPACT_EXPORTER_WEB_READ_TIMEOUT",
        default_value = "30s",
        value_parser = parse_duration
    )]
    pub read_timeout: Duration,

    /// A keep-alive connection with no request for this long is closed.
    #[arg(
        long = "web.idle-timeout",
        env = "LOADIMPACT_EXPORTER_WEB_IDLE_TIMEOUT",
        default_value = "120s",
        value_parser = parse_duration
    )]
    pub idle_timeout: Duration,

    /// Web configuration file of the `--web.listen-address` listener (TLS,
    /// basic auth, response headers), in the Prometheus exporter-toolkit
    /// format; it is read again for each new connection. It also secures
    /// the webhook unless `--webhook.listen-address` serves it. Empty: none.
    #[arg(long = "web.config.file", env = "LOADIMPACT_EXPORTER_WEB_CONFIG_FILE")]
    pub web_config_file: Option<PathBuf>,

    /// Web configuration file of the `--webhook.listen-address` listener,
    /// in the same format (without it, that listener is plain HTTP, open).
    #[arg(
        long = "web.webhook-config.file",
        env = "LOADIMPACT_EXPORTER_WEB_WEBHOOK_CONFIG_FILE",
        requires = "webhook_listen_address"
    )]
    pub webhook_config_file: Option<PathBuf>,

    /// Path under which to expose metrics.
    #[arg(
        long = "web.telemetry-path",
        env = "LOADIMPACT_EXPORTER_WEB_TELEMETRY_PATH",
        default_value = "/metrics",
        value_parser = parse_path
    )]
    pub telemetry_path: String,

    /// Path that receives Load Impact's webhooks.
    #[arg(
        long = "webhook.path",
        env = "LOADIMPACT_EXPORTER_WEBHOOK_PATH",
        default_value = "/webhook",
        value_parser = parse_path
    )]
    pub webhook_path: String,

    /// File of the webhook's tokens, one a line (two while one is
    /// rotated); re-read on SIGHUP and when it changes. A delivery must
    /// present one as the last path segment (`/webhook/<token>`) or as
    /// `?token=`. Without it, the one token may come from the variable
    /// LOADIMPACT_EXPORTER_WEBHOOK_TOKEN; without either, anyone may post.
    #[arg(
        long = "webhook.token-file",
        env = "LOADIMPACT_EXPORTER_WEBHOOK_TOKEN_FILE"
    )]
    pub token_file: Option<PathBuf>,

    /// Address ranges that may post to the webhook, comma-separated
    /// (e.g. 10.0.0.0/8,2001:db8::/32); empty: any.
    #[arg(
        long = "webhook.allowed-cidrs",
        env = "LOADIMPACT_EXPORTER_WEBHOOK_ALLOWED_CIDRS",
        value_delimiter = ',',
        value_parser = parse_net
    )]
    pub allowed_cidrs: Vec<IpNet>,

    /// Proxies (address ranges, comma-separated) whose X-Forwarded-For
    /// names the client for `--webhook.allowed-cidrs`; from any other
    /// peer the header is ignored.
    #[arg(
        long = "web.trusted-proxies",
        env = "LOADIMPACT_EXPORTER_WEB_TRUSTED_PROXIES",
        value_delimiter = ',',
        value_parser = parse_net
    )]
    pub trusted_proxies: Vec<IpNet>,

    /// The most distinct projects counted; a delivery for a new one past it
    /// is refused with 429 (known projects keep working).
    #[arg(
        long = "limits.max-projects",
        env = "LOADIMPACT_EXPORTER_LIMITS_MAX_PROJECTS",
        default_value_t = 2000
    )]
    pub max_projects: usize,

    /// The most distinct load tests with series at once (they go away after
    /// `--series.ttl`); a delivery for a new one past it is refused with 429.
    #[arg(
        long = "limits.max-load-tests",
        env = "LOADIMPACT_EXPORTER_LIMITS_MAX_LOAD_TESTS",
        default_value_t = 20000
    )]
    pub max_load_tests: usize,

    /// Largest webhook body accepted, in bytes; larger ones are answered 413.
    #[arg(
        long = "webhook.max-body-bytes",
        env = "LOADIMPACT_EXPORTER_WEBHOOK_MAX_BODY_BYTES",
        default_value_t = 65536
    )]
    pub max_body_bytes: usize,

    /// Directory of the embedded database that holds the state (with the
    /// Redis backend: this replica's snapshot of it).
    #[arg(
        long = "storage.path",
        env = "LOADIMPACT_EXPORTER_STORAGE_PATH",
        default_value = "./data"
    )]
    pub storage_path: PathBuf,

    /// Where the state lives: `embedded` (one process, its own database) or
    /// `redis` (several replicas sharing one log in Redis).
    #[arg(
        long = "storage.backend",
        env = "LOADIMPACT_EXPORTER_STORAGE_BACKEND",
        value_enum,
        default_value_t = Backend::Embedded
    )]
    pub storage_backend: Backend,

    /// Redis URL for `--storage.backend=redis` (`redis://[:password@]host:port[/db]`,
    /// `rediss://` for TLS). Better from the environment or
    /// `--storage.redis-url-file`, which `ps` does not show.
    #[arg(
        long = "storage.redis-url",
        env = "LOADIMPACT_EXPORTER_REDIS_URL",
        hide_env_values = true
    )]
    pub redis_url: Option<String>,

    /// A file holding the Redis URL (a mounted Secret); read at start.
    #[arg(
        long = "storage.redis-url-file",
        env = "LOADIMPACT_EXPORTER_REDIS_URL_FILE"
    )]
    pub redis_url_file: Option<PathBuf>,

    /// Prefix of every Redis key of this exporter's log (replicas that share
    /// one state share the prefix).
    #[arg(
        long = "storage.redis-prefix",
        env = "LOADIMPACT_EXPORTER_REDIS_PREFIX",
        default_value = "loadimpact-exporter"
    )]
    pub redis_prefix: String,

    /// Answer a delivery only once this many Redis replicas have its entry
    /// too (Redis `WAIT`); 0 trusts the primary alone.
    #[arg(
        long = "storage.redis-wait-replicas",
        env = "LOADIMPACT_EXPORTER_REDIS_WAIT_REPLICAS",
        default_value_t = 0
    )]
    pub redis_wait_replicas: u32,

    /// Time to live of the lease that makes one replica tick the clock,
    /// export spans and snapshot the state; another takes over this long
    /// after its holder stops.
    #[arg(
        long = "storage.redis-lease",
        env = "LOADIMPACT_EXPORTER_REDIS_LEASE",
        default_value = "10s",
        value_parser = parse_lease
    )]
    pub redis_lease: Duration,

    /// How often the lease holder puts the whole state in Redis (then trims
    /// the log up to it).
    #[arg(
        long = "storage.redis-snapshot-interval",
        env = "LOADIMPACT_EXPORTER_REDIS_SNAPSHOT_INTERVAL",
        default_value = "60s",
        value_parser = parse_duration
    )]
    pub redis_snapshot_interval: Duration,

    /// A run with no finish event is taken off `running` (and counted as
    /// expired) after this long.
    #[arg(
        long = "run.max-duration",
        env = "LOADIMPACT_EXPORTER_RUN_MAX_DURATION",
        default_value = "24h",
        value_parser = parse_duration
    )]
    pub run_max_duration: Duration,

    /// How long a delivery's X-LoadImpact-ID is remembered to recognise a retry.
    #[arg(
        long = "dedup.ttl",
        env = "LOADIMPACT_EXPORTER_DEDUP_TTL",
        default_value = "24h",
        value_parser = parse_duration
    )]
    pub dedup_ttl: Duration,

    /// Window of loadimpact_project_abort_ratio.
    #[arg(
        long = "abort-ratio.window",
        env = "LOADIMPACT_EXPORTER_ABORT_RATIO_WINDOW",
        default_value = "1h",
        value_parser = parse_duration
    )]
    pub abort_ratio_window: Duration,

    /// A load test's series go away after this long without events.
    #[arg(
        long = "series.ttl",
        env = "LOADIMPACT_EXPORTER_SERIES_TTL",
        default_value = "7d",
        value_parser = parse_duration
    )]
    pub series_ttl: Duration,

    /// Status code table used when a status_text is not recognised.
    #[arg(
        long = "status-table",
        env = "LOADIMPACT_EXPORTER_STATUS_TABLE",
        value_enum,
        default_value_t = StatusTable::V3
    )]
    pub status_table: StatusTable,

    /// Log level (error, warn, info, debug, trace) or a tracing filter directive.
    #[arg(
        long = "log.level",
        env = "LOADIMPACT_EXPORTER_LOG_LEVEL",
        default_value = "info"
    )]
    pub log_level: String,

    /// Log line format.
    #[arg(
        long = "log.format",
        env = "LOADIMPACT_EXPORTER_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Logfmt
    )]
    pub log_format: LogFormat,

    /// How many recent runs loadimpact_test_run_info lists.
    #[arg(
        long = "runs.info-limit",
        env = "LOADIMPACT_EXPORTER_RUNS_INFO_LIMIT",
        default_value_t = 50
    )]
    pub runs_info_limit: usize,

    #[command(flatten)]
    pub otlp: OtlpArgs,
}

impl ServerArgs {
    /// A page of the main listener that `--webhook.path` would take over
    /// (the path itself, or one below it, where tokens go), when the webhook
    /// shares that listener.
    pub fn page_under_the_webhook(&self) -> Option<&str> {
        if self.webhook_listen_address.is_some() {
            return None;
        }
        let hook = self.webhook_path.trim_end_matches('/');
        [
            self.telemetry_path.as_str(),
            "/-/healthy",
            "/-/ready",
            "/api/v1/runs",
            "/",
        ]
        .into_iter()
        .find(|page| {
            *page == self.webhook_path
                || page
                    .strip_prefix(hook)
                    .is_some_and(|rest| rest.starts_with('/'))
        })
    }

    /// `--web.config.file`, unless unset or empty.
    pub fn web_config_file(&self) -> Option<&Path> {
        nonempty_path(&self.web_config_file)
    }

    /// `--web.webhook-config.file`, unless unset or empty.
    pub fn webhook_config_file(&self) -> Option<&Path> {
        nonempty_path(&self.webhook_config_file)
    }

    /// The Redis backend's settings: `None` for the embedded store.
    pub fn replica(&self) -> anyhow::Result<Option<crate::replica::Settings>> {
        if self.storage_backend != Backend::Redis {
            return Ok(None);
        }
        let url = match (&self.redis_url, &self.redis_url_file) {
            (Some(_), Some(_)) => anyhow::bail!(
                "set --storage.redis-url or --storage.redis-url-file, not both"
            ),
            (Some(url), None) => url.trim().to_owned(),
            (None, Some(file)) => std::fs::read_to_string(file)
                .map_err(|e| anyhow::anyhow!("--storage.redis-url-file {}: {e}", file.display()))?
                .trim()
                .to_owned(),
            (None, None) => anyhow::bail!(
                "--storage.backend=redis needs --storage.redis-url, --storage.redis-url-file or LOADIMPACT_EXPORTER_REDIS_URL"
            ),
        };
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            anyhow::bail!(
                "the Redis URL must start with redis:// or rediss:// (got {})",
                crate::replica::redacted(&url)
            );
        }
        Ok(Some(crate::replica::Settings {
            url,
            prefix: self.redis_prefix.clone(),
            wait_replicas: self.redis_wait_replicas,
            lease: self.redis_lease,
            snapshot_interval: self.redis_snapshot_interval,
            replica_id: crate::replica::default_replica_id(),
        }))
    }

    /// The state machine's settings.
    pub fn machine(&self) -> Machine {
        Machine {
            status_table: self.status_table,
            dedup_ttl: millis(self.dedup_ttl),
            run_max_duration: millis(self.run_max_duration),
            series_ttl: millis(self.series_ttl),
            abort_window: millis(self.abort_ratio_window),
            spans_max_pending: self.otlp.enabled().then_some(self.otlp.max_pending),
            runs_info_limit: self.runs_info_limit,
            max_projects: self.max_projects,
            max_load_tests: self.max_load_tests,
        }
    }
}

// ---- trace export -----------------------------------------------------------

/// OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OtlpProtocol {
    #[value(name = "grpc")]
    Grpc,
    #[value(name = "http/protobuf")]
    HttpProtobuf,
}

/// Flags of the trace export.
#[derive(Debug, Clone, clap::Args)]
pub struct OtlpArgs {
    /// OTLP traces endpoint: `http://host:4317` for grpc, the full URL
    /// (`http://host:4318/v1/traces`) for http/protobuf. Unset: the standard
    /// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT / OTEL_EXPORTER_OTLP_ENDPOINT apply;
    /// none of them set: tracing is off.
    #[arg(long = "otlp.endpoint", env = "LOADIMPACT_EXPORTER_OTLP_ENDPOINT")]
    pub endpoint: Option<String>,

    /// OTLP protocol. Unset: OTEL_EXPORTER_OTLP_TRACES_PROTOCOL,
    /// OTEL_EXPORTER_OTLP_PROTOCOL, else http/protobuf.
    #[arg(
        long = "otlp.protocol",
        env = "LOADIMPACT_EXPORTER_OTLP_PROTOCOL",
        value_enum
    )]
    pub protocol: Option<OtlpProtocol>,

    /// Header sent with every export, `key=value` (the value may hold commas
    /// and `=`); repeat the flag for several. OTEL_EXPORTER_OTLP_HEADERS also
    /// applies.
    #[arg(long = "otlp.header", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,

    /// Timeout of one export request.
    #[arg(
        long = "otlp.timeout",
        env = "LOADIMPACT_EXPORTER_OTLP_TIMEOUT",
        default_value = "10s",
        value_parser = parse_duration
    )]
    pub timeout: Duration,

    /// Most spans kept waiting for the collector; beyond it new spans are
    /// dropped and counted in loadimpact_spans_dropped_total.
    #[arg(
        long = "otlp.max-pending",
        env = "LOADIMPACT_EXPORTER_OTLP_MAX_PENDING",
        default_value_t = 100_000
    )]
    pub max_pending: usize,

    /// Longest wait between retries of a failed export (backoff doubles up to it).
    #[arg(
        long = "otlp.max-backoff",
        env = "LOADIMPACT_EXPORTER_OTLP_MAX_BACKOFF",
        default_value = "60s",
        value_parser = parse_duration
    )]
    pub max_backoff: Duration,

    /// Most spans in one export request.
    #[arg(
        long = "otlp.batch-size",
        env = "LOADIMPACT_EXPORTER_OTLP_BATCH_SIZE",
        default_value_t = 512,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub batch_size: u32,
}

fn nonempty_path(path: &Option<PathBuf>) -> Option<&Path> {
    path.as_deref().filter(|p| !p.as_os_str().is_empty())
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    let (key, value) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected key=value"))?;
    let key = key.trim();
    if key.is_empty() {
        return Err(format!("{s:?}: empty header name"));
    }
    Ok((key.to_owned(), value.trim().to_owned()))
}

/// An address range (`10.0.0.0/8`), or one address (`10.0.0.1`).
fn parse_net(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{s:?}: expected an address range such as 10.0.0.0/8, or an address"))
}

/// True when the variable `name` is set to something other than blanks.
pub fn env_set(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.trim().is_empty())
}

impl OtlpArgs {
    /// Tracing is on when an endpoint is configured, by flag or standard variable.
    pub fn enabled(&self) -> bool {
        self.endpoint.as_deref().is_some_and(|e| !e.is_empty())
            || env_set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            || env_set("OTEL_EXPORTER_OTLP_ENDPOINT")
    }

    /// The protocol from the flag or the standard variables.
    pub fn resolved_protocol(&self) -> anyhow::Result<OtlpProtocol> {
        if let Some(p) = self.protocol {
            return Ok(p);
        }
        for var in [
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ] {
            if let Ok(value) = std::env::var(var) {
                return match value.trim() {
                    "grpc" => Ok(OtlpProtocol::Grpc),
                    "http/protobuf" => Ok(OtlpProtocol::HttpProtobuf),
                    other => Err(anyhow::anyhow!(
                        "{var}={other:?} is not supported (use grpc or http/protobuf)"
                    )),
                };
            }
        }
        Ok(OtlpProtocol::HttpProtobuf)
    }
}

// ---- the simulate subcommand ---------------------------------------------------

/// The outcome mix when `--outcomes` is not given: mostly successful runs.
pub const DEFAULT_OUTCOMES: &str = "finished=70,timed_out=3,aborted_by_user=8,aborted_by_system=3,aborted_by_script_error=4,aborted_by_threshold=4,failed_threshold=8";

/// Flags of the `simulate` subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {
    /// Webhook URL of the exporter to post to (http only).
    #[arg(long, default_value = "http://127.0.0.1:16565/webhook")]
    pub url: String,

    /// Number of projects to simulate (ids `--first-project-id` upwards).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub projects: u64,

    /// Test runs per project.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=100_000))]
    pub runs: u64,

    /// Organization id of every simulated project.
    #[arg(long, default_value_t = 1)]
    pub organization_id: u64,

    /// Id of the first simulated project.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub first_project_id: u64,

    /// Load tests per project (each run belongs to one of them).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=999))]
    pub load_tests: u64,

    /// Seed of the plan: the same flags and seed post the same webhooks (use
    /// another seed to post new runs to the same exporter).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// Largest number of requests in flight at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub concurrency: u64,

    /// Share of webhooks delivered twice (0 to 1).
    #[arg(long, default_value_t = 0.1, value_parser = parse_ratio)]
    pub duplicate_ratio: f64,

    /// Share of runs that never send `test.finished` (0 to 1).
    #[arg(long, default_value_t = 0.0, value_parser = parse_ratio)]
    pub unfinished_ratio: f64,

    /// Outcome weights per project, `outcome=weight,...` (outcome label values).
    #[arg(long, default_value = DEFAULT_OUTCOMES)]
    pub outcomes: OutcomeWeights,

    /// How much projects differ: each project's weights of the outcomes other
    /// than `finished` are multiplied by e^(spread x a number from -1 to 1), so
    /// some projects abort or fail more than others; 0 gives every project
    /// exactly the `--outcomes` mix.
    #[arg(long, default_value_t = 1.0, value_parser = parse_spread)]
    pub spread: f64,

    /// Time between the starts of two consecutive runs.
    #[arg(long, alias = "pace", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub interval: Duration,

    /// Typical run duration; each run lasts 0.5 to 1.5 times this.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub run_duration: Duration,

    /// Status code table the codes are sent in (the texts are always sent);
    /// k6 Cloud notifications always use the k6 table.
    #[arg(long, value_enum, default_value = "v3")]
    pub status_table: StatusTable,

    /// Which format the notifications are sent in: Load Impact's, Grafana
    /// Cloud k6's (the Generic Template), or either at random for each
    /// delivery (so some runs start in one and finish in the other).
    #[arg(long, value_enum, default_value = "legacy")]
    pub format: SimulateFormat,
}

/// The notification format of `simulate --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SimulateFormat {
    Legacy,
    K6cloud,
    Mixed,
}

fn parse_spread(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if (0.0..=5.0).contains(&v) => Ok(v),
        _ => Err(format!("`{text}` is not a number from 0 to 5")),
    }
}

fn parse_ratio(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("`{text}` is not a number from 0 to 1")),
    }
}

/// `outcome=weight` pairs, as given to `--outcomes`.
#[derive(Debug, Clone, PartialEq)]
pub struct OutcomeWeights(pub Vec<(Outcome, f64)>);

impl FromStr for OutcomeWeights {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut weights: Vec<(Outcome, f64)> = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}` is not outcome=weight"))?;
            let outcome = Outcome::ALL
                .into_iter()
                .find(|o| o.as_str() == name.trim())
                .ok_or_else(|| {
                    let names: Vec<&str> = Outcome::ALL.iter().map(|o| o.as_str()).collect();
                    format!("unknown outcome `{name}` (one of {})", names.join(", "))
                })?;
            let weight: f64 = weight
                .trim()
                .parse()
                .ok()
                .filter(|w: &f64| w.is_finite() && *w >= 0.0)
                .ok_or_else(|| format!("weight of `{name}` is not a number >= 0"))?;
            if weights.iter().any(|(o, _)| *o == outcome) {
                return Err(format!("outcome `{name}` is given twice"));
            }
            weights.push((outcome, weight));
        }
        if weights.iter().map(|(_, w)| w).sum::<f64>() <= 0.0 {
            return Err("at least one outcome needs a weight above 0".into());
        }
        Ok(OutcomeWeights(weights))
    }
}

impl fmt::Display for OutcomeWeights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(o, w)| format!("{}={w}", o.as_str()))
            .collect();
        f.write_str(&parts.join(","))
    }
}

// ---- value parsers ----------------------------------------------------------------

/// Parses `30s`, `5m`, `24h`, `7d`, `1h30m` (humantime syntax); zero is refused.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim()).map_err(|e| format!("{s:?}: {e}"))?;
    if d.is_zero() {
        return Err(format!("{s:?}: must be longer than zero"));
    }
    Ok(d)
}

fn parse_path(s: &str) -> Result<String, String> {
    if s.starts_with('/') {
        Ok(s.to_owned())
    } else {
        Err(format!("{s:?}: a path must start with '/'"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    /// The README's rule for environment variables, and its one exception.
    #[test]
    fn every_server_flag_has_the_environment_variable_the_readme_gives() {
        let command = Cli::command();
        let mut flags = 0;
        for arg in command.get_arguments() {
            let Some(long) = arg.get_long() else {
                continue;
            };
            if matches!(long, "help" | "version") {
                continue;
            }
            let env = arg.get_env().and_then(|e| e.to_str());
            let expected = match long.strip_prefix("storage.redis-") {
                Some(rest) => format!("LOADIMPACT_EXPORTER_REDIS_{rest}"),
                None => format!("LOADIMPACT_EXPORTER_{long}"),
            }
            .to_uppercase()
            .replace(['.', '-'], "_");
            // A list of `key=value`: the standard OTEL_EXPORTER_OTLP_HEADERS.
            let expected = (long != "otlp.header").then_some(expected.as_str());
            assert_eq!(env, expected, "--{long}");
            flags += 1;
        }
        assert!(flags > 30, "only {flags} flags seen");
    }

    #[test]
    fn a_webhook_path_over_a_page_is_found() {
        let args = |flags: &[&str]| {
            let mut all = vec!["x"];
            all.extend_from_slice(flags);
            Cli::try_parse_from(all).expect("parse").server
        };
        assert_eq!(args(&[]).page_under_the_webhook(), None);
        assert_eq!(
            args(&["--webhook.path=/hooks/li"]).page_under_the_webhook(),
            None
        );
        assert_eq!(
            args(&["--webhook.path=/metricsx"]).page_under_the_webhook(),
            None
        );
        for (flags, page) in [
            (&["--webhook.path=/metrics"][..], "/metrics"),
            (&["--webhook.path=/-"], "/-/healthy"),
            (&["--webhook.path=/api/"], "/api/v1/runs"),
            (&["--webhook.path=/"], "/metrics"),
            (
                &["--webhook.path=/stats", "--web.telemetry-path=/stats/prom"],
                "/stats/prom",
            ),
        ] {
            assert_eq!(
                args(flags).page_under_the_webhook(),
                Some(page),
                "{flags:?}"
            );
        }
        // On a listener of its own it takes nothing.
        let own = args(&[
            "--webhook.path=/metrics",
            "--webhook.listen-address=127.0.0.1:9781",
        ]);
        assert_eq!(own.page_under_the_webhook(), None);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn defaults() {
        let cli = Cli::try_parse_from(["loadimpact-exporter"]).expect("defaults parse");
        assert_eq!(cli.server.listen_address.port(), 16565);
        assert_eq!(cli.server.machine(), Machine::default());
        assert!(Cli::try_parse_from(["x", "--webhook.path=hook"]).is_err());
    }

    #[test]
    fn headers_parse() {
        assert_eq!(
            parse_header("authorization=Bearer x=y"),
            Ok(("authorization".into(), "Bearer x=y".into()))
        );
        assert!(parse_header("novalue").is_err());
        assert!(parse_header("=v").is_err());
    }
}
