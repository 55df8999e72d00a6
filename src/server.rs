//! Wiring and lifecycle: open the store, start the writer and the clock,
//! accept connections, and shut down in order on SIGTERM or SIGINT
//! (stop accepting, let in-flight requests finish, commit, close the store).

use crate::access::{Allowlist, Reload, Tokens, TOKEN_ENV};
use crate::clock::now_millis;
use crate::config::ServerArgs;
use crate::http::{App, Role, Throttles};
use crate::ingest::Ingest;
use crate::listen::{Accepted, Limits, ListenMetrics, Listener};
use crate::state::Input;
use crate::store::{RedbStore, Store};
use crate::webconfig::Source;
use crate::writer::{self, Shared, WriterMetrics};
use anyhow::Context;
use hyper_util::server::graceful::GracefulShutdown;
use std::sync::Arc;
use std::time::Duration;

/// How often the clock ticks (expiry of runs, forgetting of old entries).
const TICK: Duration = Duration::from_secs(1);
/// How long in-flight requests get to finish after a shutdown signal.
const DRAIN: Duration = Duration::from_secs(25);

/// Runs the exporter until SIGTERM or SIGINT.
pub async fn run(args: ServerArgs) -> anyhow::Result<()> {
    if let Some(page) = args.page_under_the_webhook() {
        anyhow::bail!(
            "--webhook.path={} would take over {page} on the same listener: choose another path, or give the webhook its own --webhook.listen-address",
            args.webhook_path
        );
    }
    // The web configuration files first: a bad one stops the start before
    // anything is opened.
    let main_security = Arc::new(Source::open("--web.config.file", args.web_config_file())?);
    let hook_security = match args.webhook_listen_address {
        Some(_) => Some(Arc::new(Source::open(
            "--web.webhook-config.file",
            args.webhook_config_file(),
        )?)),
        None => None,
    };
    let replica_settings = args.replica()?;
    let store = RedbStore::open(&args.storage_path)
        .with_context(|| format!("opening the store in {}", args.storage_path.display()))?;
    let state = store.load().context("reading the store")?;
    tracing::info!(
        path = %store.path().display(),
        runs = state.runs.len(),
        load_tests = state.load_tests.len(),
        "store open"
    );
    let shared = Arc::new(Shared::new(state, args.machine()));

    let registry = prometheus::Registry::new();
    registry
        .register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .context("registering the process collector")?;
    let writer_metrics = WriterMetrics::register(&registry).context("registering metrics")?;
    let (writer, writer_thread) = writer::spawn(
        Box::new(store),
        shared.clone(),
        writer_metrics,
        replica_settings.is_some(),
    )
    .context("starting the store writer")?;

    // With Redis, every input goes through the shared log, and the lease
    // holder ticks the clock there; otherwise straight to the writer.
    let (ingest, replica) = match replica_settings {
        Some(settings) => {
            let replica =
                crate::replica::Replica::start(settings, shared.clone(), writer.clone(), &registry)
                    .await?;
            (Ingest::Log(replica.log.clone()), Some(replica))
        }
        None => (Ingest::Local(writer.clone()), None),
    };
    let clock = replica.is_none().then(|| {
        let writer = writer.clone();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(TICK);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                if writer
                    .send(Input::Tick { now: now_millis() })
                    .await
                    .is_err()
                {
                    break;
                }
            }
        })
    });

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let span_export = if args.otlp.enabled() {
        let exporter = crate::otel::build_exporter(&args.otlp)
            .context("configuring the OTLP trace exporter")?;
        tracing::info!(
            protocol = ?args.otlp.resolved_protocol()?,
            pending = shared.read().outbox.len(),
            "exporting one span per run over OTLP"
        );
        Some(tokio::spawn(crate::otel::export_loop(
            exporter,
            shared.clone(),
            ingest.clone(),
            args.otlp.batch_size as usize,
            args.otlp.max_backoff,
            stop_rx,
        )))
    } else {
        tracing::info!("no OTLP endpoint set: tracing is off");
        None
    };

    let limits = Limits {
        max_connections: args.max_connections as usize,
        header_timeout: args.read_header_timeout,
        idle_timeout: args.idle_timeout,
    };
    let listen_metrics = ListenMetrics::register(&registry).context("registering metrics")?;
    let main_role = if args.webhook_listen_address.is_some() {
        Role::Pages
    } else {
        Role::All
    };
    let main = Listener::bind(
        args.listen_address,
        main_role,
        limits,
        listen_metrics.clone(),
        main_security.clone(),
    )
    .await
    .with_context(|| format!("listening on {}", args.listen_address))?;
    let hook = match (args.webhook_listen_address, hook_security) {
        (Some(address), Some(security)) => Some(
            Listener::bind(address, Role::Webhook, limits, listen_metrics, security)
                .await
                .with_context(|| format!("listening for the webhook on {address}"))?,
        ),
        _ => None,
    };
    tracing::info!(
        address = %main.local_addr().unwrap_or(args.listen_address),
        webhook = %args.webhook_path,
        metrics = %args.telemetry_path,
        tls = main_security.tls(),
        version = crate::version::VERSION,
        "listening"
    );
    if let Some(hook) = &hook {
        tracing::info!(
            address = %hook.local_addr().map_or_else(|e| e.to_string(), |a| a.to_string()),
            webhook = %args.webhook_path,
            tls = hook.tls(),
            "listening for the webhook alone"
        );
    }

    let tokens =
        Arc::new(Tokens::load(args.token_file.as_deref()).context("reading the webhook's tokens")?);
    if tokens.is_open() {
        tracing::warn!(
            "the webhook is open: anyone who can reach it may post runs; set --webhook.token-file or {TOKEN_ENV}"
        );
    } else {
        tracing::info!(tokens = tokens.count(), from = %tokens.origin(), "the webhook takes a token");
    }
    if tokens.placeholders() > 0 {
        tracing::error!(
            from = %tokens.origin(),
            "the token file holds the placeholder token shipped with the manifests, which is public and never accepted: put a real token in the Secret (README, Deploying)"
        );
    }
    let token_reload = tokio::spawn(reload_tokens(tokens.clone()));
    drop(writer);
    let app = Arc::new(App {
        shared: shared.clone(),
        writer: ingest,
        registry,
        telemetry_path: args.telemetry_path.clone(),
        webhook_path: args.webhook_path.clone(),
        max_body_bytes: args.max_body_bytes,
        read_timeout: args.read_timeout,
        tokens,
        allowlist: Allowlist {
            allowed: args.allowed_cidrs.clone(),
            trusted_proxies: args.trusted_proxies.clone(),
        },
        throttle: Throttles::default(),
        exposition_len: Default::default(),
    });
    let graceful = GracefulShutdown::new();
    let mut signal = std::pin::pin!(shutdown_signal());

    loop {
        tokio::select! {
            accepted = main.accept() => main.serve(accepted, app.clone(), &graceful),
            accepted = accept_on(hook.as_ref()) => {
                if let Some(hook) = &hook {
                    hook.serve(accepted, app.clone(), &graceful);
                }
            }
            signal = &mut signal => {
                tracing::info!(signal, "shutting down: no new connections, draining in-flight requests");
                break;
            }
        }
    }
    drop(main);
    drop(hook);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("in-flight requests did not finish in {DRAIN:?}; closing anyway");
    }
    if let Some(clock) = clock {
        clock.abort();
        let _ = clock.await;
    }
    token_reload.abort();
    // Let an export in flight finish and record its acknowledgement.
    let _ = stop_tx.send(true);
    if let Some(task) = span_export {
        if tokio::time::timeout(DRAIN, task).await.is_err() {
            tracing::warn!("span export did not stop in time");
        }
    }
    if let Some(replica) = replica {
        replica.stop().await;
    }
    // The writer stops once the last handle is gone: it commits what is left
    // and closes the store.
    drop(app);
    tokio::task::spawn_blocking(move || writer_thread.join())
        .await
        .context("joining the store writer")?
        .map_err(|_| anyhow::anyhow!("the store writer panicked"))?;
    tracing::info!("stopped");
    Ok(())
}

/// How often the token file is looked at for a change (a mounted Secret
/// is replaced without a signal).
const TOKEN_POLL: Duration = Duration::from_secs(2);

/// Re-reads the token file on SIGHUP and whenever it changes. A bad file
/// is logged and the tokens in force are kept.
async fn reload_tokens(tokens: Arc<Tokens>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = signal(SignalKind::hangup()).ok();
    let mut poll = tokio::time::interval(TOKEN_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let signalled = match hangup.as_mut() {
            Some(hangup) => tokio::select! {
                _ = hangup.recv() => true,
                _ = poll.tick() => false,
            },
            None => {
                poll.tick().await;
                false
            }
        };
        match tokens.reload() {
            Ok(Reload::Changed(count)) => {
                tracing::info!(tokens = count, "the webhook's tokens were reloaded");
                if tokens.placeholders() > 0 {
                    tracing::error!("the token file still holds the shipped placeholder token, which is never accepted");
                }
            }
            Ok(Reload::Unchanged) if signalled => {
                tracing::info!("SIGHUP: the webhook's tokens are unchanged");
            }
            Ok(Reload::Unchanged) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot reload the webhook's tokens; keeping those in force");
            }
        }
    }
}

/// The next connection on `listener`; never, without one.
async fn accept_on(listener: Option<&Listener>) -> Accepted {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}
