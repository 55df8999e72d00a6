//! The state machine: what every delivery does to the exporter's state.
//!
//! [`State`] holds everything the metrics are rendered from: runs, the
//! de-duplication window, load tests and every counter and histogram.
//! [`Machine::apply`] takes one [`Input`] (a parsed webhook, a rejected request
//! or a clock tick) and decides every count. It is pure: time comes in with the
//! input, and each change is recorded as a [`Key`] in [`Changes`] so the store
//! writes exactly the entries that moved. Restart-safety follows: the store
//! holds the same maps, so state loaded after a crash is the state that was
//! acknowledged.
//!
//! - `types.rs`: the domain types the maps hold (runs, load tests, counters,
//!   histograms, spans);
//! - `changes.rs`: [`Key`], [`Saved`] and [`Changes`], what an apply touched
//!   and how to undo it;
//! - `machine.rs`: [`Input`], [`Machine`] and every rule.
//!
//! Adding a map to the state: see the checklist in docs/architecture.md.

use crate::clock::Millis;
use crate::outcome::Outcome;
use crate::webhook::{Event, Project};
use changes::put;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

mod changes;
mod machine;
mod types;

pub use changes::{Changes, Key, Saved};
pub use machine::{Applied, Input, Machine};
pub use types::{
    finish_code, finish_of, seconds, CounterKey, ErrorCode, EventResult, FinishCode, Histogram,
    Limit, LoadTest, Run, SpanEnd, SpanRecord, DURATION_BUCKETS, MAX_ERROR_CODES,
};

/// Everything the exporter knows. Each map is one table of the store.
///
/// Two kinds of entry are *cold*: request ids (`dedup`) and runs that have
/// ended. They exist only so that a repeat is recognised, and they are as
/// many as the deliveries of a day, so the writer keeps them in the store
/// alone: it reads the ones a group of inputs needs into these maps before
/// applying it ([`Wanted`]) and drops them again once committed. Everything
/// else, all that `/metrics` renders, stays in memory. The machine sees no
/// difference: it always finds here every entry that its input can read.
///
/// It serializes (every map as a list of pairs) for the snapshots that
/// replicas share.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct State {
    /// Runs now running, plus (while a group is applied) the ended runs it reads.
    #[serde(with = "pairs")]
    pub runs: BTreeMap<u64, Run>,
    /// Request id -> when it was first seen (while a group is applied).
    #[serde(with = "pairs")]
    pub dedup: HashMap<String, Millis>,
    #[serde(with = "pairs")]
    pub load_tests: BTreeMap<u64, LoadTest>,
    #[serde(with = "pairs")]
    pub counters: BTreeMap<CounterKey, u64>,
    #[serde(with = "pairs")]
    pub histograms: BTreeMap<(Project, Outcome), Histogram>,
    /// Event name -> when a delivery of it was last received.
    #[serde(with = "pairs")]
    pub last_event: BTreeMap<String, Millis>,
    /// Spans not yet acknowledged by the collector, by run id.
    #[serde(with = "pairs")]
    pub outbox: BTreeMap<u64, SpanRecord>,
    /// Per project, the finishes within the abort-ratio window, sorted.
    #[serde(with = "pairs")]
    pub finishes: BTreeMap<Project, VecDeque<FinishCode>>,
    /// The `--runs.info-limit` most recently ended runs (finished or
    /// expired), by run id: the runs API and `loadimpact_test_run_info`.
    #[serde(with = "pairs")]
    pub recent: BTreeMap<u64, Run>,
}

/// A map as a list of `[key, value]` pairs: JSON objects take only string
/// keys, and the state's keys are numbers, tuples and enums.
mod pairs {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<'a, M, K, V, S>(map: &'a M, serializer: S) -> Result<S::Ok, S::Error>
    where
        &'a M: IntoIterator<Item = (&'a K, &'a V)>,
        K: Serialize + 'a,
        V: Serialize + 'a,
        S: Serializer,
    {
        serializer.collect_seq(map)
    }

    pub fn deserialize<'de, M, K, V, D>(deserializer: D) -> Result<M, D::Error>
    where
        M: FromIterator<(K, V)>,
        K: Deserialize<'de>,
        V: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        Vec::<(K, V)>::deserialize(deserializer).map(|pairs| pairs.into_iter().collect())
    }
}

/// The cold entries a group of inputs may read: what the store must put in
/// the state before the group is applied.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Wanted {
    pub request_ids: Vec<String>,
    pub run_ids: Vec<u64>,
}

impl Wanted {
    /// The runs `changes` touched and the runs wanted: all that a group can
    /// have brought into memory.
    pub fn runs_in<'a>(&'a self, changes: &'a Changes) -> impl Iterator<Item = u64> + 'a {
        let touched = changes.keys.iter().filter_map(|key| match key {
            Key::Run(id) => Some(*id),
            _ => None,
        });
        self.run_ids.iter().copied().chain(touched)
    }

    /// Adds what `input` may read.
    pub fn add(&mut self, input: &Input) {
        if let Input::Webhook {
            request_ids, event, ..
        } = input
        {
            self.add_delivery(request_ids, event);
        }
    }

    /// Adds what a delivery with these ids and this event may read.
    pub fn add_delivery(&mut self, request_ids: &[String], event: &Event) {
        self.request_ids.extend(request_ids.iter().cloned());
        if let Event::Run(run) = event {
            self.run_ids.push(run.load_test_run_id);
        }
    }
}

impl State {
    pub fn counter(&self, key: &CounterKey) -> u64 {
        self.counters.get(key).copied().unwrap_or(0)
    }

    /// Whether the exporter has counted a run of `project`.
    pub fn is_known_project(&self, project: Project) -> bool {
        let started = crate::webhook::Trigger::ALL.iter().any(|t| {
            self.counters
                .contains_key(&CounterKey::Started(project, *t))
        });
        let finished = Outcome::ALL.iter().any(|o| {
            self.counters
                .contains_key(&CounterKey::Finished(project, *o))
        });
        started || finished || self.counters.contains_key(&CounterKey::Expired(project))
    }

    /// Every project the exporter has counted a run for.
    pub fn projects(&self) -> BTreeSet<Project> {
        self.counters
            .keys()
            .filter_map(|key| match key {
                CounterKey::Started(p, _) | CounterKey::Finished(p, _) | CounterKey::Expired(p) => {
                    Some(*p)
                }
                _ => None,
            })
            .collect()
    }

    pub(super) fn bump(&mut self, key: CounterKey, changes: &mut Changes) {
        changes.touch(self, Key::Counter(key.clone()));
        *self.counters.entry(key).or_insert(0) += 1;
    }

    /// A copy without the cold entries: what stays in memory between commits.
    pub fn without_cold(&self) -> State {
        let mut hot = self.clone();
        hot.runs.retain(|_, run| run.is_running());
        hot.dedup.clear();
        hot
    }

    /// Drops the cold entries a group brought in (once committed): every
    /// request id, and those of `runs` (the runs it fetched or touched) that
    /// are not running. The hot entries stay as they are.
    pub fn evict_cold(&mut self, runs: impl IntoIterator<Item = u64>) {
        for id in runs {
            if self.runs.get(&id).is_some_and(|run| !run.is_running()) {
                self.runs.remove(&id);
            }
        }
        self.dedup.clear();
    }

    /// The recent runs, most recently ended first.
    pub fn recent_runs(&self) -> Vec<(u64, &Run, Millis, &'static str)> {
        let mut runs: Vec<_> = self
            .recent
            .iter()
            .filter_map(|(id, run)| run.ended().map(|(at, outcome)| (*id, run, at, outcome)))
            .collect();
        runs.sort_by_key(|(id, _, at, _)| (std::cmp::Reverse(*at), std::cmp::Reverse(*id)));
        runs
    }

    /// How many finishes of `project` in the window have `code`.
    pub fn finish_count(&self, project: &Project, code: FinishCode) -> usize {
        self.finishes.get(project).map_or(0, |codes| {
            codes.partition_point(|c| *c <= code) - codes.partition_point(|c| *c < code)
        })
    }

    /// Makes `n` the number of finishes of `project` with `code`.
    pub(super) fn set_finish_count(&mut self, project: Project, code: FinishCode, n: usize) {
        let codes = self.finishes.entry(project).or_default();
        let (from, to) = (
            codes.partition_point(|c| *c < code),
            codes.partition_point(|c| *c <= code),
        );
        for _ in n..to - from {
            codes.remove(from);
        }
        for _ in to - from..n {
            codes.insert(from, code);
        }
        if codes.is_empty() {
            self.finishes.remove(&project);
        }
    }

    /// Copies the entries named by `keys` (or their absence) from `from`:
    /// what a store's commit does.
    pub fn copy_entries(&mut self, from: &State, keys: &BTreeSet<Key>) {
        for key in keys {
            self.restore(key, from.snapshot(key));
        }
    }

    /// The key of every entry the state holds: all that a store must write
    /// to hold the whole of it.
    pub fn keys(&self) -> BTreeSet<Key> {
        let mut keys = BTreeSet::new();
        keys.extend(self.runs.keys().map(|id| Key::Run(*id)));
        keys.extend(self.dedup.keys().map(|id| Key::Dedup(id.clone())));
        keys.extend(self.load_tests.keys().map(|id| Key::LoadTest(*id)));
        keys.extend(self.counters.keys().map(|k| Key::Counter(k.clone())));
        keys.extend(self.histograms.keys().map(|(p, o)| Key::Histogram(*p, *o)));
        keys.extend(self.last_event.keys().map(|e| Key::LastEvent(e.clone())));
        keys.extend(self.outbox.keys().map(|id| Key::Outbox(*id)));
        for (project, codes) in &self.finishes {
            keys.extend(codes.iter().map(|code| Key::Finish(*project, *code)));
        }
        keys.extend(self.recent.keys().map(|id| Key::Recent(*id)));
        keys
    }

    /// The entry named by `key`, as it is now.
    pub fn snapshot(&self, key: &Key) -> Saved {
        match key {
            Key::Run(id) => Saved::Run(self.runs.get(id).cloned()),
            Key::Dedup(id) => Saved::Dedup(self.dedup.get(id).copied()),
            Key::LoadTest(id) => Saved::LoadTest(self.load_tests.get(id).cloned()),
            Key::Counter(k) => Saved::Counter(self.counters.get(k).copied()),
            Key::Histogram(p, o) => Saved::Histogram(self.histograms.get(&(*p, *o)).cloned()),
            Key::LastEvent(e) => Saved::LastEvent(self.last_event.get(e).copied()),
            Key::Outbox(id) => Saved::Outbox(self.outbox.get(id).cloned()),
            Key::Finish(project, code) => Saved::Finish(self.finish_count(project, *code)),
            Key::Recent(id) => Saved::Recent(self.recent.get(id).cloned()),
        }
    }

    /// Sets the entry named by `key` to `saved` (a snapshot of the same key).
    pub fn restore(&mut self, key: &Key, saved: Saved) {
        match (key, saved) {
            (Key::Run(id), Saved::Run(v)) => put(&mut self.runs, *id, v),
            (Key::LoadTest(id), Saved::LoadTest(v)) => put(&mut self.load_tests, *id, v),
            (Key::Counter(k), Saved::Counter(v)) => put(&mut self.counters, k.clone(), v),
            (Key::Histogram(p, o), Saved::Histogram(v)) => put(&mut self.histograms, (*p, *o), v),
            (Key::LastEvent(e), Saved::LastEvent(v)) => put(&mut self.last_event, e.clone(), v),
            (Key::Outbox(id), Saved::Outbox(v)) => put(&mut self.outbox, *id, v),
            (Key::Finish(project, code), Saved::Finish(n)) => {
                self.set_finish_count(*project, *code, n)
            }
            (Key::Recent(id), Saved::Recent(v)) => put(&mut self.recent, *id, v),
            (Key::Dedup(id), Saved::Dedup(v)) => match v {
                Some(v) => {
                    self.dedup.insert(id.clone(), v);
                }
                None => {
                    self.dedup.remove(id);
                }
            },
            (key, saved) => debug_assert!(false, "snapshot {saved:?} is not of {key:?}"),
        }
    }
}

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
