//! loadimpact-exporter: Load Impact (Grafana Cloud k6) webhooks in, exact
//! Prometheus metrics out.
//!
//! The modules follow the data's route:
//! - [`webhook`]: parse and validate one delivery (pure);
//! - [`outcome`]: classify a finished run's status (pure);
//! - [`state`]: the state machine that applies an input and decides every count (pure);
//! - [`store`]: durable storage of the state behind a small trait (redb);
//! - [`writer`]: the single writer that applies inputs in order and group-commits them;
//! - [`metrics`]: the exposition, rendered from the committed state at scrape time;
//! - [`otel`]: one span per run, drained from the store's outbox to OTLP;
//! - [`http`]: thin routing of the endpoints;
//! - [`server`]: wiring and lifecycle (signals, draining);
//! - [`config`]: the flags; [`simulate`]: the `simulate` subcommand.

pub mod clock;
pub mod config;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod otel;
pub mod outcome;
pub mod server;
pub mod simulate;
pub mod state;
pub mod store;
pub mod version;
pub mod webhook;
pub mod writer;
