//! Log set-up: logfmt (the Prometheus ecosystem's default) or JSON lines on
//! stderr, filtered by `--log.level`.

use crate::config::LogFormat;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber.
pub fn init(level: &str, format: LogFormat) -> anyhow::Result<()> {
    let filter =
        EnvFilter::try_new(level).map_err(|e| anyhow::anyhow!("--log.level {level:?}: {e}"))?;
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Logfmt => registry
            .with(
                tracing_logfmt::builder()
                    .layer()
                    .with_writer(std::io::stderr),
            )
            .try_init()?,
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr),
            )
            .try_init()?,
    }
    Ok(())
}
