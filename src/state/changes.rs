//! What an apply touched: the [`Key`] of every entry it changed, for the
//! store to write, with each entry's value from before ([`Saved`]), so that a
//! group that could not be stored is undone exactly.

use super::{CounterKey, FinishCode, Histogram, LoadTest, Run, SpanRecord, State};
use crate::clock::Millis;
use crate::outcome::Outcome;
use crate::webhook::Project;
use std::collections::{BTreeMap, BTreeSet};

/// The identity of one stored entry; what a change touched.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    Run(u64),
    Dedup(String),
    LoadTest(u64),
    Counter(CounterKey),
    Histogram(Project, Outcome),
    LastEvent(String),
    Outbox(u64),
    Finish(Project, FinishCode),
    Recent(u64),
}

/// One entry of the state as it was (`None`: absent), to undo a change.
#[derive(Debug, Clone, PartialEq)]
pub enum Saved {
    Run(Option<Run>),
    Dedup(Option<Millis>),
    LoadTest(Option<LoadTest>),
    Counter(Option<u64>),
    Histogram(Option<Histogram>),
    LastEvent(Option<Millis>),
    Outbox(Option<SpanRecord>),
    /// How many finishes had that code.
    Finish(usize),
    Recent(Option<Run>),
}

/// The entries an apply touched, for the store to write (or delete, when the
/// entry is gone from the state), with each entry's value from before the
/// first touch, so that a change that could not be stored can be undone.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Changes {
    pub keys: BTreeSet<Key>,
    undo: Vec<(Key, Saved)>,
}

impl Changes {
    /// Changes that write `keys` and cannot be undone: a store filled
    /// anew from a whole state.
    pub fn writing(keys: BTreeSet<Key>) -> Changes {
        Changes {
            keys,
            undo: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Records that `key` is about to change. Called before the change.
    pub(super) fn touch(&mut self, state: &State, key: Key) {
        if !self.keys.contains(&key) {
            self.undo.push((key.clone(), state.snapshot(&key)));
            self.keys.insert(key);
        }
    }

    /// Puts every touched entry back as it was before these changes.
    pub fn undo(self, state: &mut State) {
        for (key, saved) in self.undo.into_iter().rev() {
            state.restore(&key, saved);
        }
    }
}

pub(super) fn put<K: Ord, V>(map: &mut BTreeMap<K, V>, key: K, value: Option<V>) {
    match value {
        Some(value) => {
            map.insert(key, value);
        }
        None => {
            map.remove(&key);
        }
    }
}
