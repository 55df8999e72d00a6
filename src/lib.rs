//! loadimpact-exporter: Load Impact (Grafana Cloud k6) webhooks in, exact
//! Prometheus metrics and one OpenTelemetry span per run out.
//!
//! The modules, from the bottom (pure, no I/O) to the top (wiring):
//! - `clock`, `version`: time in milliseconds, the build's version;
//! - `webhook`: parse and validate one delivery (pure);
//! - `outcome`: classify a finished run's status (pure);
//! - `state`: the state machine that applies an input and decides every count (pure);
//! - `store`: durable storage of the state behind a small trait (redb);
//! - `writer`: the single writer that applies inputs in order and group-commits them;
//! - `metrics`: the exposition, rendered from the committed state at scrape time;
//! - `otel`: one span per run, drained from the store's outbox to OTLP;
//! - `http`: thin routing of the endpoints;
//! - [`server`]: wiring and lifecycle (signals, draining);
//! - [`config`]: every flag; [`logging`]: the log format.
//!
//! [`simulate`] is a client of the server, not part of it: it posts a
//! realistic stream of runs to a running exporter (`loadimpact-exporter
//! simulate`), and it alone uses the HTTP client and `rand`.
//!
//! Only what the binary uses is public; docs/architecture.md has the map.

// Input never reaches a panic: no unwrap, expect, panic or unchecked
// indexing outside tests.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

mod access;
mod clock;
pub mod config;
mod http;
mod ingest;
mod listen;
pub mod logging;
mod metrics;
mod otel;
mod outcome;
mod replica;
pub mod server;
#[cfg(feature = "simulate")]
pub mod simulate;
mod state;
mod store;
mod version;
mod webconfig;
mod webhook;
mod writer;
