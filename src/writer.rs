//! The single writer: applies inputs in order and commits them in groups.
//!
//! Every input (webhook, rejection, tick) goes through one channel to one
//! thread. The thread takes whatever has queued up, applies it all to the
//! shared [`State`] with the [`Machine`], commits the touched entries in one
//! durable transaction, and only then answers each request. Requests that
//! arrive while a commit is in flight form the next group, so one fsync serves
//! many requests (group commit) and durability does not cost throughput.
//!
//! Readers (scrapes, the runs API) take the state's read lock; the writer
//! holds the write lock from apply to commit, so a reader never sees an
//! entry that is not yet durable. A failed commit reloads the state from the
//! store and answers every request of the group with an error (503).

use crate::clock::Millis;
use crate::state::{Applied, Changes, CounterKey, Input, Key, Machine, State, Wanted};
use crate::store::{Position, Store};
use crate::webhook::Delivery;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;
use tokio::sync::{mpsc, oneshot, Notify};

/// At most this many inputs share one commit.
const MAX_GROUP: usize = 4096;

/// The state as readers see it, with the machine that interprets it.
pub struct Shared {
    state: RwLock<State>,
    pub machine: Machine,
    ready: AtomicBool,
    /// The store failed and could not be reopened: the process is not healthy.
    store_failed: AtomicBool,
    /// Woken after a commit that put spans in the outbox.
    pub outbox_notify: Notify,
    /// With a shared log: whether the log answers (false: not ready).
    log_ok: AtomicBool,
    /// With a shared log: whether this process holds the lease that makes
    /// it the one to export spans. Always true without a shared log.
    exports_spans: AtomicBool,
    /// Set when a commit of log entries failed and the state went back to
    /// the store's: the log must be read again from the stored position.
    pub resync: AtomicBool,
}

impl Shared {
    pub fn new(state: State, machine: Machine) -> Shared {
        Shared {
            state: RwLock::new(state),
            machine,
            ready: AtomicBool::new(false),
            store_failed: AtomicBool::new(false),
            outbox_notify: Notify::new(),
            log_ok: AtomicBool::new(true),
            exports_spans: AtomicBool::new(true),
            resync: AtomicBool::new(false),
        }
    }

    /// Read access to the committed state.
    pub fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// False once the store failed and could not be reopened.
    pub fn is_healthy(&self) -> bool {
        !self.store_failed.load(Ordering::Acquire)
    }

    /// True while the writer is running, the store took its last commit and
    /// (with a shared log) the log answers.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && self.log_ok.load(Ordering::Acquire)
    }

    /// Whether this process is the one to export the spans in the outbox.
    pub fn exports_spans(&self) -> bool {
        self.exports_spans.load(Ordering::Acquire)
    }

    pub fn set_exports_spans(&self, exports: bool) {
        self.exports_spans.store(exports, Ordering::Release);
    }

    pub fn set_log_ok(&self, ok: bool) {
        self.log_ok.store(ok, Ordering::Release);
    }
}

/// Why an input was not made durable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    #[error("the store could not commit the event: {0}")]
    Store(String),
    #[error("the exporter is shutting down")]
    Closed,
}

/// Where a delivery's answer goes: what it decided, once durable.
pub type AppliedReply = oneshot::Sender<Result<Applied, WriteError>>;
/// Where another input's answer goes, once durable.
pub type StoredReply = oneshot::Sender<Result<(), WriteError>>;

/// One request to the writer.
enum Request {
    /// A valid delivery received at `at` (at `position` of the shared log).
    Webhook {
        delivery: Delivery,
        at: Millis,
        reply: AppliedReply,
        position: Option<Position>,
    },
    /// Any other input; answered once durable if `reply` is set.
    Other {
        input: Input,
        reply: Option<StoredReply>,
        position: Option<Position>,
    },
    /// Not an input: an operation on the store as a whole.
    Control(Control),
}

impl Request {
    /// Answers an input that is not applied with `error` (a gone receiver
    /// is the client's business).
    fn refuse(self, error: WriteError) {
        match self {
            Request::Webhook { reply, .. } => drop(reply.send(Err(error))),
            Request::Other { reply, .. } => {
                reply.map(|reply| reply.send(Err(error)));
            }
            Request::Control(_) => {}
        }
    }
}

/// Operations on the whole store, for a replica following a shared log.
enum Control {
    /// Replace everything by a snapshot taken at `position`.
    Replace {
        state: Box<State>,
        position: Position,
        reply: StoredReply,
    },
    /// Everything stored (cold entries included), with its position.
    Dump {
        reply: oneshot::Sender<Result<(State, Option<Position>), WriteError>>,
    },
    /// The position the store reflects.
    Position {
        reply: oneshot::Sender<Result<Option<Position>, WriteError>>,
    },
}

/// Where the answer to an input read from the shared log goes: to the
/// request that appended it, when that request came to this process.
pub enum Reply {
    None,
    Applied(AppliedReply),
    Stored(StoredReply),
}

/// An input read from the shared log, at its position.
pub struct Logged {
    pub input: Input,
    pub position: Position,
    pub reply: Reply,
}

/// A request applied and waiting for its group's commit.
enum Pending {
    Applied(AppliedReply, Applied),
    Stored(StoredReply),
}

impl Pending {
    /// Answers with the group's outcome. A closed receiver means the client
    /// went away; the input is applied anyway.
    fn answer(self, outcome: &Result<(), WriteError>) {
        match self {
            Pending::Applied(reply, applied) => {
                let _ = reply.send(outcome.clone().map(|()| applied));
            }
            Pending::Stored(reply) => {
                let _ = reply.send(outcome.clone());
            }
        }
    }
}

/// The writer's own telemetry: how commits go in this process.
#[derive(Clone)]
pub struct WriterMetrics {
    commits: IntCounter,
    failures: IntCounter,
    duration: Histogram,
    group_size: Histogram,
    /// Request ids deleted past `--dedup.ttl` (`kind="request_ids"`).
    pruned_ids: IntCounter,
    /// Ended runs deleted past their retention (`kind="runs"`).
    pruned_runs: IntCounter,
    /// The store's file, read once a tick.
    size: IntGauge,
}

impl WriterMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<WriterMetrics> {
        let commits = IntCounter::new(
            "loadimpact_exporter_store_commits_total",
            "Durable commits made by this process.",
        )?;
        let failures = IntCounter::new(
            "loadimpact_exporter_store_commit_failures_total",
            "Commits that failed in this process (their requests were answered 503).",
        )?;
        let duration = Histogram::with_opts(
            HistogramOpts::new(
                "loadimpact_exporter_store_commit_duration_seconds",
                "Time to apply and durably commit one group of inputs.",
            )
            .buckets(prometheus::exponential_buckets(0.0005, 2.0, 14)?),
        )?;
        let group_size = Histogram::with_opts(
            HistogramOpts::new(
                "loadimpact_exporter_store_inputs_per_commit",
                "Inputs (webhooks, rejections, ticks) that shared one commit.",
            )
            .buckets(prometheus::exponential_buckets(1.0, 2.0, 13)?),
        )?;
        let pruned = IntCounterVec::new(
            Opts::new(
                "loadimpact_exporter_store_pruned_total",
                "Entries this process deleted from the store past their retention: request ids (--dedup.ttl) and ended runs.",
            ),
            &["kind"],
        )?;
        let size = IntGauge::new(
            "loadimpact_exporter_store_size_bytes",
            "Size of the embedded store's file, read once a second.",
        )?;
        registry.register(Box::new(commits.clone()))?;
        registry.register(Box::new(failures.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(group_size.clone()))?;
        registry.register(Box::new(pruned.clone()))?;
        registry.register(Box::new(size.clone()))?;
        // Both kinds exported from the start, so that rate() sees the
        // first prune.
        let pruned_ids = pruned.with_label_values(&["request_ids"]);
        let pruned_runs = pruned.with_label_values(&["runs"]);
        Ok(WriterMetrics {
            commits,
            failures,
            duration,
            group_size,
            pruned_ids,
            pruned_runs,
            size,
        })
    }
}

/// A handle to send inputs to the writer. Cheap to clone.
#[derive(Clone)]
pub struct WriterHandle {
    tx: mpsc::Sender<Request>,
}

impl WriterHandle {
    /// Applies a delivery received at `at`; once it is durable, what it decided.
    pub async fn submit_webhook(
        &self,
        delivery: Delivery,
        at: Millis,
    ) -> Result<Applied, WriteError> {
        let (reply, answer) = oneshot::channel();
        let request = Request::Webhook {
            delivery,
            at,
            reply,
            position: None,
        };
        self.tx
            .send(request)
            .await
            .map_err(|_| WriteError::Closed)?;
        answer.await.map_err(|_| WriteError::Closed)?
    }

    /// Applies `input` and waits until it is durable.
    pub async fn submit(&self, input: Input) -> Result<(), WriteError> {
        let (reply, answer) = oneshot::channel();
        let request = Request::Other {
            input,
            reply: Some(reply),
            position: None,
        };
        self.tx
            .send(request)
            .await
            .map_err(|_| WriteError::Closed)?;
        answer.await.map_err(|_| WriteError::Closed)?
    }

    /// Sends `input` without waiting for its commit (clock ticks).
    pub async fn send(&self, input: Input) -> Result<(), WriteError> {
        let request = Request::Other {
            input,
            reply: None,
            position: None,
        };
        self.tx.send(request).await.map_err(|_| WriteError::Closed)
    }

    /// Applies inputs read from the shared log, in order; each is answered
    /// (to its `reply`) once committed with its position.
    pub async fn apply_logged(&self, entries: Vec<Logged>) -> Result<(), WriteError> {
        for entry in entries {
            let position = Some(entry.position);
            let request = match (entry.input, entry.reply) {
                (
                    Input::Webhook {
                        request_ids,
                        event,
                        at,
                    },
                    reply,
                ) => Request::Webhook {
                    delivery: Delivery { request_ids, event },
                    at,
                    reply: match reply {
                        Reply::Applied(reply) => reply,
                        _ => oneshot::channel().0,
                    },
                    position,
                },
                (input, reply) => Request::Other {
                    input,
                    reply: match reply {
                        Reply::Stored(reply) => Some(reply),
                        _ => None,
                    },
                    position,
                },
            };
            self.tx
                .send(request)
                .await
                .map_err(|_| WriteError::Closed)?;
        }
        Ok(())
    }

    /// Replaces the whole state by a snapshot taken at `position`.
    pub async fn replace(&self, state: State, position: Position) -> Result<(), WriteError> {
        let (reply, answer) = oneshot::channel();
        self.control(Control::Replace {
            state: Box::new(state),
            position,
            reply,
        })
        .await?;
        answer.await.map_err(|_| WriteError::Closed)?
    }

    /// The whole stored state, cold entries included, with its position.
    pub async fn dump(&self) -> Result<(State, Option<Position>), WriteError> {
        let (reply, answer) = oneshot::channel();
        self.control(Control::Dump { reply }).await?;
        answer.await.map_err(|_| WriteError::Closed)?
    }

    /// The shared log's position the stored state reflects.
    pub async fn position(&self) -> Result<Option<Position>, WriteError> {
        let (reply, answer) = oneshot::channel();
        self.control(Control::Position { reply }).await?;
        answer.await.map_err(|_| WriteError::Closed)?
    }

    async fn control(&self, control: Control) -> Result<(), WriteError> {
        self.tx
            .send(Request::Control(control))
            .await
            .map_err(|_| WriteError::Closed)
    }
}

/// Starts the writer thread. It runs until every [`WriterHandle`] is dropped,
/// then commits what is left and closes the store.
///
/// With `replicated`, every input comes from the shared log: a failed
/// commit sends the log's reader back to the stored position
/// ([`Shared::resync`]) instead of counting 503s here, since the log, not
/// this process, decides what every replica counts.
pub fn spawn(
    store: Box<dyn Store>,
    shared: Arc<Shared>,
    metrics: WriterMetrics,
    replicated: bool,
) -> std::io::Result<(WriterHandle, std::thread::JoinHandle<()>)> {
    let (tx, rx) = mpsc::channel(MAX_GROUP * 4);
    shared.ready.store(true, Ordering::Release);
    let writer = Writer {
        store,
        shared,
        metrics,
        carried: Changes::default(),
        unstored: Unstored::default(),
        replicated,
        applied: None,
    };
    let thread = std::thread::Builder::new()
        .name("store-writer".into())
        .spawn(move || writer.run(rx))?;
    Ok((WriterHandle { tx }, thread))
}

/// The writer thread's own state.
struct Writer {
    store: Box<dyn Store>,
    /// The state it alone changes, and the flags readers look at.
    shared: Arc<Shared>,
    metrics: WriterMetrics,
    /// Entries changed but not yet committed: the counts of [`Writer::unstored`],
    /// written with the next commit.
    carried: Changes,
    /// What failed groups counted that is not yet in the store; re-applied
    /// after every reload.
    unstored: Unstored,
    /// Inputs come from the shared log (see [`spawn`]).
    replicated: bool,
    /// With a shared log: the position the state in memory reflects. Entries
    /// are applied in the log's order without a gap: one that does not come
    /// next is refused and the log re-read ([`Shared::resync`]).
    applied: Option<Position>,
}

impl Writer {
    /// Takes every group off the channel until it closes, then stores what
    /// is left over.
    fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        if self.replicated {
            self.applied = self.stored_position();
        }
        self.read_size();
        while let Some(first) = rx.blocking_recv() {
            let mut group = Vec::new();
            let mut next = Some(first);
            while let Some(request) = next.take() {
                match request {
                    // Whole-store operations run between groups.
                    Request::Control(control) => {
                        if !group.is_empty() {
                            self.group(std::mem::take(&mut group));
                        }
                        self.control(control);
                    }
                    request => group.push(request),
                }
                if group.len() < MAX_GROUP {
                    next = rx.try_recv().ok();
                }
            }
            if !group.is_empty() {
                self.group(group);
            }
        }
        self.shared.ready.store(false, Ordering::Release);
        if !self.carried.is_empty() {
            let state = self.shared.read();
            if let Err(e) = self.store.commit(&state, &self.carried) {
                tracing::warn!(error = %e, "final commit failed");
            }
        }
        tracing::info!("store writer stopped; store closed");
    }

    /// Applies one group and commits it: reads the cold entries it needs,
    /// applies every input in order, commits once, drops the cold entries
    /// again, and answers each request only then.
    fn group(&mut self, group: Vec<Request>) {
        let group = self.in_order(group);
        if group.is_empty() {
            return;
        }
        let started = Instant::now();
        let group_len = group.len();
        let shared = self.shared.clone();
        let mut state = shared.write();
        let mut wanted = Wanted::default();
        let mut tick = None;
        let mut webhooks = 0;
        // The group's counts that outlive a failed commit (see `failed`).
        let mut counted = Unstored::default();
        let mut position = None;
        for request in &group {
            match request {
                Request::Webhook {
                    delivery,
                    position: at,
                    ..
                } => {
                    wanted.add_delivery(&delivery.request_ids, &delivery.event);
                    webhooks += 1;
                    position = position.max(*at);
                }
                Request::Other {
                    input,
                    position: at,
                    ..
                } => {
                    wanted.add(input);
                    counted.count(input);
                    if let Input::Tick { now } = input {
                        tick = tick.max(Some(*now));
                    }
                    position = position.max(*at);
                }
                Request::Control(_) => {}
            }
        }
        if let Err(e) = self.store.fetch(&mut state, &wanted) {
            // Nothing of the group was applied: every request gets the error.
            // The counts carried from an earlier failure are in the state
            // but not stored: undone with the rest, and counted again.
            let carried = std::mem::take(&mut self.carried);
            counted.rejected(503, webhooks);
            let error = self.failed(&mut state, carried, counted, group_len, e);
            drop(state);
            for request in group {
                request.refuse(error.clone());
            }
            return;
        }
        let mut changes = std::mem::take(&mut self.carried);
        let dropped_before = state.counter(&CounterKey::SpansDropped);
        let mut replies = Vec::with_capacity(group_len);
        for request in group {
            match request {
                Request::Webhook {
                    delivery,
                    at,
                    reply,
                    ..
                } => {
                    let applied = shared.machine.apply_webhook(
                        &mut state,
                        delivery.request_ids,
                        delivery.event,
                        at,
                        &mut changes,
                    );
                    replies.push(Pending::Applied(reply, applied));
                }
                Request::Other { input, reply, .. } => {
                    shared.machine.apply(&mut state, input, &mut changes);
                    replies.extend(reply.map(Pending::Stored));
                }
                Request::Control(_) => {}
            }
        }
        if changes.is_empty() && position.is_none() {
            // Nothing to store (and no position to move).
            state.evict_cold(wanted.runs_in(&changes));
            drop(state);
            answer(replies, Ok(()));
            self.prune(tick);
            return;
        }
        if let Err(e) = self.store.commit_at(&state, &changes, position.as_ref()) {
            counted.rejected(503, webhooks);
            let error = self.failed(&mut state, changes, counted, group_len, e);
            drop(state);
            answer(replies, Err(error));
            return;
        }
        self.unstored = Unstored::default();
        if position.is_some() {
            self.applied = position;
        }
        state.evict_cold(wanted.runs_in(&changes));
        let dropped = state
            .counter(&CounterKey::SpansDropped)
            .saturating_sub(dropped_before);
        let pending = state.outbox.len();
        drop(state);
        if dropped > 0 {
            tracing::warn!(
                dropped,
                pending,
                "span outbox is full (--otlp.max-pending): spans dropped"
            );
        }
        if changes.keys.iter().any(|k| matches!(k, Key::Outbox(_))) {
            shared.outbox_notify.notify_one();
        }
        self.metrics.commits.inc();
        self.metrics.group_size.observe(group_len as f64);
        self.metrics
            .duration
            .observe(started.elapsed().as_secs_f64());
        shared.ready.store(true, Ordering::Release);
        // Answered before the lines are logged: the senders need not wait
        // for them.
        let applied = applied_of(&replies);
        answer(replies, Ok(()));
        log_applied(&applied);
        self.prune(tick);
    }

    /// On a tick, after the group is answered and the state's lock given
    /// back: removes stale cold entries from the store. It decides nothing
    /// (an entry past its retention reads as absent already), so neither the
    /// group's senders nor the scrapes wait for it.
    fn prune(&mut self, tick: Option<Millis>) {
        let Some(now) = tick else {
            return;
        };
        match self.store.prune(now, &self.shared.machine) {
            Ok(pruned) => {
                self.metrics.pruned_ids.inc_by(pruned.request_ids);
                self.metrics.pruned_runs.inc_by(pruned.runs);
            }
            Err(e) => {
                tracing::warn!(error = %e, "pruning old request ids and runs failed; retried next tick")
            }
        }
        self.read_size();
    }

    /// Sets the store's size gauge from its file.
    fn read_size(&self) {
        if let Some(bytes) = self.store.size_bytes() {
            self.metrics
                .size
                .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
    }

    /// A group could not be stored: nothing of it may show. Undoes it (back
    /// to the last commit), reopens the store (redb refuses writes after an
    /// I/O error), reads back what is durable, and answers the whole group
    /// with the error (503: the senders retry). What the group `counted`
    /// whatever happened (its webhooks' 503s, the rejections and failed span
    /// exports in it) is counted again, and written with the next commit.
    fn failed(
        &mut self,
        state: &mut State,
        changes: Changes,
        counted: Unstored,
        inputs: usize,
        e: crate::store::StoreError,
    ) -> WriteError {
        self.metrics.failures.inc();
        tracing::error!(error = %e, inputs, "commit failed; answering 503 so the senders retry");
        changes.undo(state);
        if self.replicated {
            // The inputs are in the log: read them again once the store is
            // back. Not ready until a commit succeeds again: deliveries should
            // go to replicas that can take them.
            self.shared.ready.store(false, Ordering::Release);
            if let Ok(durable) = self.store.recover() {
                *state = durable;
                self.shared.store_failed.store(false, Ordering::Release);
            } else {
                self.shared.store_failed.store(true, Ordering::Release);
            }
            self.applied = self.stored_position();
            self.shared.resync.store(true, Ordering::Release);
            return WriteError::Store(e.to_string());
        }
        self.unstored.add(counted);
        match self.store.recover() {
            Ok(durable) => {
                *state = durable;
                self.shared.store_failed.store(false, Ordering::Release);
                self.shared.ready.store(true, Ordering::Release);
                tracing::info!("store reopened after the failed commit");
            }
            Err(reopen) => {
                tracing::error!(error = %reopen, "cannot reopen the store; not ready, not healthy");
                self.shared.store_failed.store(true, Ordering::Release);
                self.shared.ready.store(false, Ordering::Release);
            }
        }
        // Count everything not yet stored; written with the next commit.
        self.carried = Changes::default();
        for (input, times) in self.unstored.inputs() {
            for _ in 0..times {
                self.shared
                    .machine
                    .apply(state, input.clone(), &mut self.carried);
            }
        }
        WriteError::Store(e.to_string())
    }
}

/// Counts that a failed group still makes: requests answered (its webhooks
/// with 503, and the rejections it carried) and span exports that failed.
/// They happened whether or not the store took them, so they are counted in
/// memory at once and written with the next commit that succeeds.
#[derive(Debug, Default)]
struct Unstored {
    /// Rejected requests by the code they were answered with.
    rejected: std::collections::BTreeMap<u16, u64>,
    span_export_failures: u64,
}

impl Unstored {
    /// Counts `input` if it is one of the kinds kept.
    fn count(&mut self, input: &Input) {
        match input {
            Input::Rejected { code } => self.rejected(*code, 1),
            Input::SpanExportFailed => self.span_export_failures += 1,
            _ => {}
        }
    }

    fn rejected(&mut self, code: u16, times: u64) {
        if times > 0 {
            *self.rejected.entry(code).or_default() += times;
        }
    }

    fn add(&mut self, other: Unstored) {
        for (code, times) in other.rejected {
            self.rejected(code, times);
        }
        self.span_export_failures += other.span_export_failures;
    }

    /// Each input to apply again, with how many times.
    fn inputs(&self) -> Vec<(Input, u64)> {
        let rejected = self
            .rejected
            .iter()
            .map(|(code, times)| (Input::Rejected { code: *code }, *times));
        let failures = (self.span_export_failures > 0)
            .then_some((Input::SpanExportFailed, self.span_export_failures));
        rejected.chain(failures).collect()
    }
}

impl Writer {
    /// The position the store reflects (`None` on an error: the log is then
    /// taken from its start, which the next entry's check refuses, and the
    /// reader re-reads).
    fn stored_position(&self) -> Option<Position> {
        self.store.position().unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot read the log position from the store");
            None
        })
    }

    /// The requests of `group` that may be applied: every input of this
    /// process, and the log's entries that continue the log from
    /// [`Writer::applied`]. Any other entry (one already applied, or one
    /// after a gap) is answered with an error and the log re-read from the
    /// stored position.
    fn in_order(&mut self, group: Vec<Request>) -> Vec<Request> {
        let mut next = self.applied.map_or(1, |p| p.ordinal + 1);
        let mut kept = Vec::with_capacity(group.len());
        for request in group {
            let position = match &request {
                Request::Webhook { position, .. } | Request::Other { position, .. } => *position,
                Request::Control(_) => None,
            };
            match position {
                Some(p) if p.ordinal != next => {
                    if !self.shared.resync.swap(true, Ordering::AcqRel) {
                        tracing::warn!(
                            expected = next,
                            got = p.ordinal,
                            "a log entry out of order; reading the log again from the stored position"
                        );
                    }
                    request.refuse(WriteError::Store("the log is being read again".into()));
                }
                Some(_) => {
                    next += 1;
                    kept.push(request);
                }
                None => kept.push(request),
            }
        }
        kept
    }

    /// Runs one whole-store operation.
    fn control(&mut self, control: Control) {
        match control {
            Control::Replace {
                state,
                position,
                reply,
            } => {
                let result = self
                    .store
                    .replace(&state, &position)
                    .and_then(|()| self.store.load());
                let outcome = match result {
                    Ok(hot) => {
                        *self.shared.write() = hot;
                        self.applied = Some(position);
                        Ok(())
                    }
                    Err(e) => Err(WriteError::Store(e.to_string())),
                };
                let _ = reply.send(outcome);
            }
            Control::Dump { reply } => {
                let dump = self
                    .store
                    .load_all()
                    .and_then(|state| Ok((state, self.store.position()?)));
                let _ = reply.send(dump.map_err(|e| WriteError::Store(e.to_string())));
            }
            Control::Position { reply } => {
                let position = self.store.position();
                let _ = reply.send(position.map_err(|e| WriteError::Store(e.to_string())));
            }
        }
    }
}

fn answer(replies: Vec<Pending>, outcome: Result<(), WriteError>) {
    for pending in replies {
        pending.answer(&outcome);
    }
}

/// What the group's webhooks decided, to log once they are answered.
fn applied_of(replies: &[Pending]) -> Vec<Applied> {
    replies
        .iter()
        .filter_map(|pending| match pending {
            Pending::Applied(_, applied) => Some(applied.clone()),
            Pending::Stored(_) => None,
        })
        .collect()
}

/// One line per applied delivery, at info (and a warning for an unknown
/// status), written by the writer thread in the group's order.
fn log_applied(applied: &[Applied]) {
    for applied in applied {
        tracing::info!(
            event = applied.event,
            result = applied.result.as_str(),
            run_id = applied.run_id,
            outcome = applied.outcome.map(|o| o.as_str()),
            status = applied.status,
            duration_seconds = applied.duration_millis.map(crate::state::seconds),
            "webhook applied"
        );
        if applied.outcome == Some(crate::outcome::Outcome::Unknown) {
            tracing::warn!(
                run_id = applied.run_id,
                status = applied.status,
                "finished run has an unknown status; counted with outcome=\"unknown\""
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use crate::webhook::Event;

    fn ping(id: &str) -> Delivery {
        Delivery {
            request_ids: vec![id.into()],
            event: Event::NotificationChannel,
        }
    }

    fn start(store: MemoryStore) -> (WriterHandle, Arc<Shared>, std::thread::JoinHandle<()>) {
        let shared = Arc::new(Shared::new(State::default(), Machine::default()));
        let metrics = WriterMetrics::register(&Registry::new()).expect("metrics");
        let (handle, thread) =
            spawn(Box::new(store), shared.clone(), metrics, false).expect("spawn writer");
        (handle, shared, thread)
    }

    #[tokio::test]
    async fn a_failed_commit_answers_an_error_and_changes_nothing() {
        let (handle, shared, thread) = start(MemoryStore {
            fail_commits: true,
            ..MemoryStore::default()
        });
        let err = handle
            .submit_webhook(ping("a"), 1)
            .await
            .expect_err("commit fails");
        assert!(matches!(err, WriteError::Store(_)));
        {
            let state = shared.read();
            assert!(state.dedup.is_empty(), "the failed event left a trace");
            assert!(state.last_event.is_empty());
            assert_eq!(
                state.counter(&crate::state::CounterKey::Requests { code: 503 }),
                1
            );
        }
        drop(handle);
        thread.join().expect("writer thread");
    }

    #[tokio::test]
    async fn the_503s_of_a_store_that_stays_gone_are_counted_once_each() {
        // Commits fail and so do reads: the first group fails in its commit,
        // the later ones already in their fetch, and the store never reopens.
        let (handle, shared, thread) = start(MemoryStore {
            fail_commits: true,
            fail_reads: true,
            ..MemoryStore::default()
        });
        for answered in 1..=4 {
            let err = handle
                .submit_webhook(ping(&format!("gone-{answered}")), 1)
                .await
                .expect_err("the store is gone");
            assert!(matches!(err, WriteError::Store(_)));
            let state = shared.read();
            assert_eq!(
                state.counter(&crate::state::CounterKey::Requests { code: 503 }),
                answered,
                "503s counted after {answered} answers"
            );
            assert!(state.dedup.is_empty(), "a failed event left a trace");
        }
        assert!(!shared.is_healthy());
        drop(handle);
        thread.join().expect("writer thread");
    }

    #[tokio::test]
    async fn a_failed_commit_keeps_the_rejections_and_export_failures_it_held() {
        let (handle, shared, thread) = start(MemoryStore {
            fail_commits: true,
            ..MemoryStore::default()
        });
        let count = |key: crate::state::CounterKey| shared.read().counter(&key);
        for round in 1..=2 {
            for input in [Input::Rejected { code: 401 }, Input::SpanExportFailed] {
                let err = handle.submit(input).await.expect_err("commit fails");
                assert!(matches!(err, WriteError::Store(_)));
            }
            handle
                .submit_webhook(ping(&format!("w{round}")), 1)
                .await
                .expect_err("commit fails");
            assert_eq!(
                count(crate::state::CounterKey::Requests { code: 401 }),
                round
            );
            assert_eq!(count(crate::state::CounterKey::SpanExportFailures), round);
            assert_eq!(
                count(crate::state::CounterKey::Requests { code: 503 }),
                round
            );
        }
        drop(handle);
        thread.join().expect("writer thread");
    }

    #[tokio::test]
    async fn concurrent_requests_are_each_answered_after_commit() {
        let (handle, shared, thread) = start(MemoryStore::default());
        let mut tasks = Vec::new();
        for i in 0..200 {
            let handle = handle.clone();
            tasks.push(tokio::spawn(async move {
                handle.submit_webhook(ping(&i.to_string()), 1).await
            }));
        }
        for task in tasks {
            let applied = task.await.expect("join").expect("durable");
            assert_eq!(applied.result, crate::state::EventResult::Accepted);
        }
        let state = shared.read();
        assert_eq!(state.counter(&CounterKey::Requests { code: 200 }), 200);
        assert!(state.dedup.is_empty(), "request ids are not kept in memory");
        drop(state);
        drop(handle);
        thread.join().expect("writer thread");
    }

    fn logged(ordinal: u64, id: &str) -> (Logged, oneshot::Receiver<Result<Applied, WriteError>>) {
        let (reply, answer) = oneshot::channel();
        let entry = Logged {
            input: Input::Webhook {
                request_ids: vec![id.into()],
                event: Event::NotificationChannel,
                at: 1,
            },
            position: Position {
                ordinal,
                ms: ordinal,
                seq: 0,
            },
            reply: Reply::Applied(reply),
        };
        (entry, answer)
    }

    #[tokio::test]
    async fn a_replica_whose_commits_fail_is_not_ready_and_reads_the_log_again() {
        let shared = Arc::new(Shared::new(State::default(), Machine::default()));
        let metrics = WriterMetrics::register(&Registry::new()).expect("metrics");
        let store = MemoryStore {
            fail_commits: true,
            ..MemoryStore::default()
        };
        let (handle, thread) =
            spawn(Box::new(store), shared.clone(), metrics, true).expect("spawn writer");
        assert!(shared.is_ready());
        let (entry, answer) = logged(1, "a");
        handle.apply_logged(vec![entry]).await.expect("sent");
        assert!(answer.await.expect("answer").is_err());
        assert!(!shared.is_ready(), "ready while its commits fail");
        assert!(shared.resync.load(Ordering::Acquire));
        assert!(
            shared.read().dedup.is_empty(),
            "the failed entry left a trace"
        );
        drop(handle);
        thread.join().expect("writer thread");
    }

    #[tokio::test]
    async fn log_entries_apply_only_in_order_and_a_gap_asks_for_a_resync() {
        let shared = Arc::new(Shared::new(State::default(), Machine::default()));
        let metrics = WriterMetrics::register(&Registry::new()).expect("metrics");
        let (handle, thread) = spawn(
            Box::new(MemoryStore::default()),
            shared.clone(),
            metrics,
            true,
        )
        .expect("spawn writer");
        let (first, first_answer) = logged(1, "a");
        let (second, second_answer) = logged(2, "b");
        // Entry 4 after 2: entry 3 is missing.
        let (after_gap, gap_answer) = logged(4, "d");
        // Entry 2 again: already applied.
        let (again, again_answer) = logged(2, "b");
        handle
            .apply_logged(vec![first, second, after_gap, again])
            .await
            .expect("sent");
        assert!(first_answer.await.expect("answer").is_ok());
        assert!(second_answer.await.expect("answer").is_ok());
        assert!(gap_answer.await.expect("answer").is_err());
        assert!(again_answer.await.expect("answer").is_err());
        assert!(shared.resync.load(Ordering::Acquire));
        assert_eq!(
            shared.read().counter(&CounterKey::Requests { code: 200 }),
            2
        );
        assert_eq!(
            handle
                .position()
                .await
                .expect("position")
                .map(|p| p.ordinal),
            Some(2)
        );
        // Entry 3 then continues the log.
        let (third, third_answer) = logged(3, "c");
        handle.apply_logged(vec![third]).await.expect("sent");
        assert!(third_answer.await.expect("answer").is_ok());
        assert_eq!(
            shared.read().counter(&CounterKey::Requests { code: 200 }),
            3
        );
        drop(handle);
        thread.join().expect("writer thread");
    }
}
