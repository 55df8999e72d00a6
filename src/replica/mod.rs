//! Several replicas on one Redis: a replicated log of inputs.
//!
//! The state machine is pure and deterministic, so replicas agree by
//! applying the same inputs in the same order. The replica that receives a
//! delivery appends it, as the [`Input`] the parser made of it, to one
//! Redis stream ([`redis::RedisLog::append`]), which numbers entries
//! without a gap; every replica reads the stream in order ([`follow`]) and
//! hands each entry to its own writer, which applies it with the same
//! [`crate::state::Machine`] and commits it to the local store together
//! with the entry's position. The receiving replica answers the delivery
//! once its own writer has committed the entry: the answer is what the
//! machine decided (accepted, duplicate, refused), and the entry is in
//! Redis before any 2xx.
//!
//! - Time: an entry's receipt time is its stream id's, given by Redis, so
//!   it is the same on every replica and never goes back.
//! - What changes state without a delivery is an entry too: clock ticks,
//!   rejected requests and span acknowledgements. Ticks come from the lease
//!   holder ([`lead`]), which is also the one replica that exports spans.
//! - The local store is the snapshot: a restart reads the log from the
//!   stored position. The lease holder also puts the whole state in Redis
//!   now and then and trims the log (see [`lead`] for the rule); a replica
//!   whose position was trimmed away (new, or gone too long) starts from
//!   that snapshot.
//! - Redis unreachable: appends fail, so the webhook answers 503 (counted
//!   once Redis is back) and `/-/ready` says not ready; nothing is answered
//!   2xx that is not in the log.

use crate::clock::{now_millis, Millis};
use crate::state::{Applied, Input, State};
use crate::store::Position;
use crate::webhook::Delivery;
use crate::writer::{Reply, Shared, WriteError, WriterHandle};
use prometheus::{IntCounter, IntGauge, Registry};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

mod follow;
mod lead;
mod redis;

/// How long a request waits for its own entry to be applied here before
/// it is answered 503 (the entry stays in the log; a retry is recognised).
const APPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// How many uncounted rejections go with one append.
const MAX_REJECTIONS_PER_APPEND: u64 = 10_000;

/// The replica's settings (see the `--storage.redis-*` flags).
#[derive(Debug, Clone)]
pub struct Settings {
    pub url: String,
    pub prefix: String,
    pub wait_replicas: u32,
    pub lease: Duration,
    pub snapshot_interval: Duration,
    /// This replica's name in Redis: the host name and process id.
    pub replica_id: String,
}

/// A snapshot of the whole state at a position of the log, as stored in Redis.
#[derive(serde::Serialize, serde::Deserialize)]
struct Snapshot {
    position: Position,
    state: State,
}

/// The replica's own telemetry (per process, unlike the state).
#[derive(Clone)]
struct LogMetrics {
    lag: IntGauge,
    position: IntGauge,
    lease_held: IntGauge,
    appends: IntCounter,
    append_failures: IntCounter,
    snapshots: IntCounter,
    bootstraps: IntCounter,
}

impl LogMetrics {
    fn register(registry: &Registry) -> prometheus::Result<LogMetrics> {
        let gauge = |name: &str, help: &str| -> prometheus::Result<IntGauge> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let counter = |name: &str, help: &str| -> prometheus::Result<IntCounter> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        Ok(LogMetrics {
            lag: gauge(
                "loadimpact_exporter_log_lag_entries",
                "Entries of the shared log that this replica has not applied yet.",
            )?,
            position: gauge(
                "loadimpact_exporter_log_position_entries",
                "Ordinal of the last entry of the shared log applied by this replica.",
            )?,
            lease_held: gauge(
                "loadimpact_exporter_log_lease_held",
                "1 while this replica holds the lease (ticks the clock, exports spans, snapshots the state).",
            )?,
            appends: counter(
                "loadimpact_exporter_log_appends_total",
                "Appends of this replica to the shared log.",
            )?,
            append_failures: counter(
                "loadimpact_exporter_log_append_failures_total",
                "Appends to the shared log that failed (their requests were answered 503).",
            )?,
            snapshots: counter(
                "loadimpact_exporter_log_snapshots_total",
                "Snapshots of the state this replica put in Redis.",
            )?,
            bootstraps: counter(
                "loadimpact_exporter_log_bootstraps_total",
                "Times this replica started over from the snapshot in Redis.",
            )?,
        })
    }
}

/// Requests of this process waiting for their entry to be applied, by nonce.
type Waiters = Mutex<HashMap<String, Reply>>;

/// The append side of the log: what the HTTP layer and the span exporter
/// submit to. Cheap to clone.
#[derive(Clone)]
pub struct LogHandle {
    inner: Arc<Inner>,
}

struct Inner {
    redis: redis::RedisLog,
    replica_id: String,
    next_nonce: AtomicU64,
    waiters: Arc<Waiters>,
    /// Rejected requests (by code) not yet in the log: the 503s answered
    /// while Redis was away, counted with the next append.
    uncounted: Mutex<HashMap<u16, u64>>,
    metrics: LogMetrics,
}

impl LogHandle {
    /// Appends a delivery received at `at`; once this replica has applied
    /// it, what the machine decided.
    pub async fn submit_webhook(
        &self,
        delivery: Delivery,
        at: Millis,
    ) -> Result<Applied, WriteError> {
        let (reply, answer) = oneshot::channel();
        let input = Input::Webhook {
            request_ids: delivery.request_ids,
            event: delivery.event,
            at,
        };
        self.append_and_wait(input, Reply::Applied(reply), answer, 503)
            .await
    }

    /// Appends any other input and waits until it is applied here. A
    /// rejection that cannot be appended is kept and counted with the next
    /// append.
    pub async fn submit(&self, input: Input) -> Result<(), WriteError> {
        let code = match input {
            Input::Rejected { code } => code,
            _ => 0,
        };
        let (reply, answer) = oneshot::channel();
        self.append_and_wait(input, Reply::Stored(reply), answer, code)
            .await
    }

    /// Appends an input nobody waits for (the lease holder's clock ticks).
    async fn append_only(&self, input: Input) -> Result<(), WriteError> {
        let record = serde_json::to_vec(&input).map_err(|e| WriteError::Store(e.to_string()))?;
        self.append(vec![(String::new(), record)])
            .await
            .map_err(|(e, _)| e)
    }

    /// Keeps `n` rejected requests of `code` to count with the next append.
    fn uncount(&self, code: u16, n: u64) {
        *self.uncounted().entry(code).or_insert(0) += n;
    }

    fn uncounted(&self) -> std::sync::MutexGuard<'_, HashMap<u16, u64>> {
        self.inner
            .uncounted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Appends `input`, then waits for its `answer`. When the append fails,
    /// the request is answered with the code `uncounted` (unless 0), which
    /// is counted with the next append; an input already in the log is
    /// counted as the log says.
    async fn append_and_wait<T>(
        &self,
        input: Input,
        reply: Reply,
        answer: oneshot::Receiver<Result<T, WriteError>>,
        uncounted: u16,
    ) -> Result<T, WriteError> {
        let record = serde_json::to_vec(&input).map_err(|e| WriteError::Store(e.to_string()))?;
        let nonce = format!(
            "{}/{}",
            self.inner.replica_id,
            self.inner.next_nonce.fetch_add(1, Ordering::Relaxed)
        );
        self.waiters().insert(nonce.clone(), reply);
        if let Err((e, appended)) = self.append(vec![(nonce.clone(), record)]).await {
            self.waiters().remove(&nonce);
            if uncounted != 0 && !appended {
                self.uncount(uncounted, 1);
            }
            return Err(e);
        }
        match tokio::time::timeout(APPLY_TIMEOUT, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(WriteError::Closed),
            Err(_) => {
                self.waiters().remove(&nonce);
                Err(WriteError::Store(
                    "the event is in the shared log but not yet applied here".into(),
                ))
            }
        }
    }

    fn waiters(&self) -> std::sync::MutexGuard<'_, HashMap<String, Reply>> {
        self.inner.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends `entries`, after the rejections not yet counted. On an error,
    /// whether the entries are in the log all the same (appended, but not
    /// on enough Redis replicas): they then count as the log says.
    async fn append(&self, entries: Vec<(String, Vec<u8>)>) -> Result<(), (WriteError, bool)> {
        let owed = self.take_uncounted();
        let mut all = Vec::with_capacity(entries.len());
        let rejected = |code: u16| {
            serde_json::to_vec(&Input::Rejected { code })
                .map_err(|e| (WriteError::Store(e.to_string()), false))
        };
        for (code, n) in &owed {
            let record = rejected(*code)?;
            for _ in 0..*n {
                all.push((String::new(), record.clone()));
            }
        }
        all.extend(entries);
        match self.inner.redis.append(&all).await {
            Ok(()) => {
                self.inner.metrics.appends.inc();
                Ok(())
            }
            Err(e @ redis::AppendError::NotReplicated { .. }) => {
                self.inner.metrics.append_failures.inc();
                Err((
                    WriteError::Store(format!("the shared log (Redis): {e}")),
                    true,
                ))
            }
            Err(e) => {
                self.inner.metrics.append_failures.inc();
                for (code, n) in owed {
                    self.uncount(code, n);
                }
                Err((
                    WriteError::Store(format!("the shared log (Redis): {e}")),
                    false,
                ))
            }
        }
    }

    /// Up to [`MAX_REJECTIONS_PER_APPEND`] uncounted rejections, taken out.
    fn take_uncounted(&self) -> Vec<(u16, u64)> {
        let mut uncounted = self.uncounted();
        let mut room = MAX_REJECTIONS_PER_APPEND;
        let mut taken = Vec::new();
        for (code, n) in uncounted.iter_mut() {
            let take = (*n).min(room);
            if take > 0 {
                taken.push((*code, take));
                *n -= take;
                room -= take;
            }
        }
        uncounted.retain(|_, n| *n > 0);
        taken
    }
}

/// What runs the replica: the reader and the lease holder's duties.
pub struct Replica {
    pub log: LogHandle,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Replica {
    /// Connects to Redis, checks that this replica shares the rules of the
    /// others, and starts following the log. `/-/ready` stays false until
    /// the replica has caught up.
    pub async fn start(
        settings: Settings,
        shared: Arc<Shared>,
        writer: WriterHandle,
        registry: &Registry,
    ) -> anyhow::Result<Replica> {
        let client = ::redis::Client::open(settings.url.as_str())
            .map_err(|e| anyhow::anyhow!("--storage.redis-url: {e}"))?;
        let redis = redis::RedisLog::connect(
            &client,
            &settings.prefix,
            settings.wait_replicas,
            Duration::from_secs(5),
        )
        .map_err(|e| anyhow::anyhow!("connecting to Redis: {e}"))?;
        let rules = format!("{:?}", shared.machine);
        // A replica with other rules than the others' would count otherwise:
        // it must not start. Redis away at start is no reason not to: the
        // reader checks once it answers.
        let check = tokio::time::timeout(Duration::from_secs(5), redis.agree_on_rules(&rules));
        let checked = match check.await {
            Ok(Ok(stored)) => {
                if let Some(e) = rules_differ(&settings.prefix, &stored, &rules) {
                    anyhow::bail!(e);
                }
                true
            }
            Ok(Err(e)) => {
                tracing::warn!(redis = %redacted(&settings.url), error = %e, "Redis does not answer; not ready until it does");
                false
            }
            Err(_) => {
                tracing::warn!(redis = %redacted(&settings.url), "Redis does not answer within 5 s; not ready until it does");
                false
            }
        };
        let metrics = LogMetrics::register(registry)?;
        shared.set_log_ok(false);
        shared.set_exports_spans(false);
        let waiters = Arc::new(Waiters::default());
        let log = LogHandle {
            inner: Arc::new(Inner {
                redis: redis.clone(),
                replica_id: settings.replica_id.clone(),
                next_nonce: AtomicU64::new(0),
                waiters: waiters.clone(),
                uncounted: Mutex::new(HashMap::new()),
                metrics: metrics.clone(),
            }),
        };
        let reader = redis::connection(&client, Duration::from_secs(5))
            .map_err(|e| anyhow::anyhow!("connecting to Redis: {e}"))?;
        let follower = follow::Follower {
            redis: redis.clone(),
            reader,
            prefix: settings.prefix.clone(),
            shared: shared.clone(),
            writer: writer.clone(),
            replica_id: settings.replica_id.clone(),
            waiters,
            metrics: metrics.clone(),
            position: None,
            caught_up_once: false,
            reported: None,
            rules: (!checked).then_some(rules),
        };
        let leader = lead::Leader {
            redis,
            log: log.clone(),
            shared,
            writer,
            settings: settings.clone(),
            metrics,
        };
        tracing::info!(
            redis = %redacted(&settings.url),
            prefix = %settings.prefix,
            replica = %settings.replica_id,
            "following the shared log in Redis"
        );
        Ok(Replica {
            log,
            tasks: vec![tokio::spawn(follower.run()), tokio::spawn(leader.run())],
        })
    }

    /// Stops reading and gives the lease up, so that another replica takes
    /// over at once, and takes this replica's report out of the trim rule.
    pub async fn stop(self) {
        for task in &self.tasks {
            task.abort();
        }
        for task in self.tasks {
            let _ = task.await;
        }
        let inner = &self.log.inner;
        if let Err(e) = inner.redis.release(&inner.replica_id).await {
            tracing::debug!(error = %e, "releasing the lease");
        }
        // Its report would hold back the trim until it ages out; a restart
        // comes back under another id.
        if let Err(e) = inner
            .redis
            .forget(std::slice::from_ref(&inner.replica_id))
            .await
        {
            tracing::debug!(error = %e, "forgetting this replica's report");
        }
    }
}

/// Why a replica with `rules` must not follow a log whose replicas apply
/// `stored`, if they differ.
fn rules_differ(prefix: &str, stored: &str, rules: &str) -> Option<String> {
    (stored != rules).then(|| format!(
        "the replicas on {prefix}:* apply other rules than this one's flags: every replica must run with the same --run.max-duration, --dedup.ttl, --series.ttl, --abort-ratio.window, --status-table, --limits.*, --runs.info-limit and OTLP settings (stored: {stored}; here: {rules}); to change them, use a new --storage.redis-prefix or delete the key {prefix}:rules"
    ))
}

/// `url` without its password, for logs.
pub fn redacted(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((_, host)) => format!("{scheme}://***@{host}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// This process's default replica id: the host name (a pod's name) and
/// the process id, so that two processes never share one.
pub fn default_replica_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .unwrap_or_else(|| "replica".into());
    format!("{host}-{}-{}", std::process::id(), now_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(
            redacted("redis://:s3cret@redis:6379/0"),
            "redis://***@redis:6379/0"
        );
        assert_eq!(
            redacted("rediss://user:p@ss@host:6380"),
            "rediss://***@host:6380"
        );
        assert_eq!(redacted("redis://redis:6379"), "redis://redis:6379");
    }
}
