//! The reader of the shared log: every entry, in order and without a gap,
//! to this replica's writer; a gap (entries trimmed while the replica was
//! away) sends it back to the snapshot in Redis.

use super::redis::{RawEntry, RedisLog};
use super::{LogMetrics, Snapshot, Waiters};
use crate::clock::now_millis;
use crate::state::Input;
use crate::store::Position;
use crate::writer::{Logged, Reply, Shared, WriterHandle};
use anyhow::Context;
use redis::aio::ConnectionManager;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The most entries read at once.
const BATCH: usize = 1024;
/// How long one read waits for a new entry.
const BLOCK: Duration = Duration::from_secs(1);
/// The wait before reading again after an error.
const RETRY: Duration = Duration::from_millis(500);
/// How often the replica writes its position in Redis (see `lead`'s trim rule).
const REPORT_EVERY: Duration = Duration::from_secs(1);

/// The reader task's state.
pub(super) struct Follower {
    pub redis: RedisLog,
    /// A connection of its own, for the blocking reads.
    pub reader: ConnectionManager,
    pub prefix: String,
    pub replica_id: String,
    pub shared: Arc<Shared>,
    pub writer: WriterHandle,
    /// This process's requests waiting for their entries.
    pub waiters: Arc<Waiters>,
    pub metrics: LogMetrics,
    /// The last entry handed to the writer (`None` until read from the store).
    pub position: Option<Position>,
    /// Whether the replica has once been level with the log: until then it
    /// is not ready.
    pub caught_up_once: bool,
    /// When the position was last written in Redis.
    pub reported: Option<Instant>,
    /// This replica's rules, while not yet compared with the log's (Redis
    /// did not answer at start).
    pub rules: Option<String>,
}

impl Follower {
    /// Reads the log until the task is stopped; errors (Redis away) make
    /// the replica not ready until a read succeeds again.
    pub async fn run(mut self) {
        let mut failing = false;
        loop {
            match self.step().await {
                Ok(()) => {
                    if failing {
                        tracing::info!("the shared log answers again");
                        failing = false;
                    }
                    self.shared.set_log_ok(self.caught_up_once);
                }
                Err(e) => {
                    self.shared.set_log_ok(false);
                    if !failing {
                        tracing::error!(
                            error = format!("{e:#}"),
                            "cannot read the shared log; not ready until it answers"
                        );
                        failing = true;
                    }
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    }

    /// One read: the next entries to the writer, then the lag.
    async fn step(&mut self) -> anyhow::Result<()> {
        if let Some(rules) = &self.rules {
            let stored = self.redis.agree_on_rules(rules).await?;
            if let Some(e) = super::rules_differ(&self.prefix, &stored, rules) {
                // Nothing is applied: this replica stays not ready.
                tracing::error!("{e}");
                tokio::time::sleep(Duration::from_secs(30)).await;
                anyhow::bail!("not following the shared log: other rules");
            }
            self.rules = None;
        }
        if self.shared.resync.swap(false, Ordering::AcqRel) {
            self.position = None;
            // A local commit failed (or an entry came out of order): wait a
            // moment before reading the entries again, rather than retrying
            // a failing disk in a tight loop.
            tokio::time::sleep(RETRY).await;
        }
        let position = match self.position {
            Some(position) => position,
            None => {
                let stored = self.writer.position().await?.unwrap_or_default();
                self.position = Some(stored);
                stored
            }
        };
        let entries =
            RedisLog::read_after(&mut self.reader, &self.prefix, &position, BATCH, BLOCK).await?;
        let last = self.redis.last_ordinal().await?;
        if last < position.ordinal {
            anyhow::bail!(
                "the shared log ends at entry {last} but this replica's store is at {position}: was Redis emptied? Remove this replica's --storage.path to start from the log"
            );
        }
        let mut batch = Vec::with_capacity(entries.len());
        for (next, entry) in (position.ordinal + 1..).zip(entries) {
            if entry.position.ordinal != next {
                return self.bootstrap(next, entry.position).await;
            }
            batch.push(self.logged(entry));
        }
        if let Some(last_read) = batch.last().map(|l| l.position) {
            self.writer.apply_logged(batch).await?;
            self.position = Some(last_read);
        }
        let applied = self.position.map_or(0, |p| p.ordinal);
        let lag = last.saturating_sub(applied);
        self.metrics.lag.set(i64::try_from(lag).unwrap_or(i64::MAX));
        self.metrics
            .position
            .set(i64::try_from(applied).unwrap_or(i64::MAX));
        if lag == 0 && !self.caught_up_once {
            self.caught_up_once = true;
            tracing::info!(position = applied, "caught up with the shared log; ready");
        }
        self.report().await
    }

    /// An entry as the writer takes it: the input, timed by the log, with
    /// the reply of the request here that appended it.
    fn logged(&self, entry: RawEntry) -> Logged {
        let ms = i64::try_from(entry.position.ms).unwrap_or(i64::MAX);
        let input = match serde_json::from_slice::<Input>(&entry.record) {
            Ok(Input::Webhook {
                request_ids, event, ..
            }) => Input::Webhook {
                request_ids,
                event,
                at: ms,
            },
            Ok(Input::Tick { .. }) => Input::Tick { now: ms },
            Ok(input) => input,
            Err(e) => {
                tracing::warn!(entry = %entry.position, error = %e, "a log entry this build cannot read; skipped on every replica alike");
                Input::Unreadable
            }
        };
        let reply = match entry.nonce.as_str() {
            "" => Reply::None,
            nonce => self
                .waiters
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(nonce)
                .unwrap_or(Reply::None),
        };
        Logged {
            input,
            position: entry.position,
            reply,
        }
    }

    /// Entries before `found` are gone (expected `next`): start over from
    /// the snapshot in Redis, which the trim rule keeps at or past them.
    async fn bootstrap(&mut self, next: u64, found: Position) -> anyhow::Result<()> {
        let bytes = self
            .redis
            .snapshot()
            .await?
            .context("the shared log was trimmed but Redis holds no snapshot")?;
        let snapshot: Snapshot =
            serde_json::from_slice(&bytes).context("the snapshot in Redis does not decode")?;
        if snapshot.position.ordinal + 1 < found.ordinal {
            anyhow::bail!(
                "the log starts at entry {} but the snapshot is at {}: entries are missing",
                found.ordinal,
                snapshot.position
            );
        }
        tracing::warn!(
            expected = next,
            found = found.ordinal,
            snapshot = %snapshot.position,
            "entries this replica needs were trimmed: starting over from the snapshot in Redis"
        );
        self.writer
            .replace(snapshot.state, snapshot.position)
            .await?;
        self.position = Some(snapshot.position);
        self.metrics.bootstraps.inc();
        Ok(())
    }

    /// Writes in Redis, once a second, the position this replica has stored.
    async fn report(&mut self) -> anyhow::Result<()> {
        if self.reported.is_some_and(|at| at.elapsed() < REPORT_EVERY) {
            return Ok(());
        }
        if let Some(stored) = self.writer.position().await? {
            self.redis
                .report(&self.replica_id, &stored, now_millis())
                .await?;
        }
        self.reported = Some(Instant::now());
        Ok(())
    }
}
