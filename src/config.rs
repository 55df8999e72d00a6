//! Command-line flags, in the Prometheus exporters' style (`--web.listen-address`,
//! `--storage.path`, …). Every flag can also be set through an environment
//! variable `LOADIMPACT_EXPORTER_<FLAG>`, with dots and dashes as underscores.

use crate::otel::OtlpArgs;
use crate::outcome::StatusTable;
use crate::simulate::SimulateArgs;
use crate::state::{millis, Machine};
use clap::{Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Receives Load Impact (Grafana Cloud k6) webhooks and exports the test runs
/// as Prometheus metrics and OpenTelemetry spans.
#[derive(Debug, Clone, Parser)]
#[command(name = "loadimpact-exporter", version = version_string(), about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub server: ServerArgs,
}

const fn version_string() -> &'static str {
    concat!(
        env!("CARGO_PKG_VERSION"),
        " (revision ",
        env!("LOADIMPACT_EXPORTER_REVISION"),
        ")"
    )
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Post a realistic stream of simulated runs to a running exporter.
    Simulate(SimulateArgs),
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
    /// Address to listen on for the webhook, metrics and API.
    #[arg(
        long = "web.listen-address",
        env = "LOADIMPACT_EXPORTER_WEB_LISTEN_ADDRESS",
        default_value = "0.0.0.0:16565"
    )]
    pub listen_address: SocketAddr,

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

    /// Largest webhook body accepted, in bytes; larger ones are answered 413.
    #[arg(
        long = "webhook.max-body-bytes",
        env = "LOADIMPACT_EXPORTER_WEBHOOK_MAX_BODY_BYTES",
        default_value_t = 65536
    )]
    pub max_body_bytes: usize,

    /// Directory of the embedded database that holds the state.
    #[arg(
        long = "storage.path",
        env = "LOADIMPACT_EXPORTER_STORAGE_PATH",
        default_value = "./data"
    )]
    pub storage_path: PathBuf,

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
        }
    }
}

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
}
