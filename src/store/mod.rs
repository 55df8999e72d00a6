//! Durable storage of the [`State`], behind the small [`Store`] trait.
//!
//! The state machine says which entries changed ([`Changes`]); a store writes
//! those entries, as they now stand in the state, in one durable transaction.
//! [`RedbStore`] (in `embedded.rs`) keeps them in a redb database (one table per map of the
//! state, values as JSON) and commits with fsync before returning, so anything
//! acknowledged survives `kill -9`. [`MemoryStore`] is the same contract in
//! memory, for tests. A shared backend for several replicas would be a third
//! implementation of the same trait.

use crate::clock::Millis;
use crate::state::{Changes, Machine, State, Wanted};

mod embedded;

pub use embedded::RedbStore;

/// A store error: the write was not made durable, or the state could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage: {0}")]
    Db(String),
    #[error("storage holds an entry that does not decode ({table}): {message}")]
    Corrupt {
        table: &'static str,
        message: String,
    },
}

/// Where the state lives between restarts.
///
/// The state has hot entries, loaded at start and kept in memory, and cold
/// ones (request ids, ended runs: see [`State`]) that stay in the store and
/// are read on demand with [`Store::fetch`].
pub trait Store: Send {
    /// Reads the hot part of the state: everything but the cold entries.
    fn load(&self) -> Result<State, StoreError>;
    /// Copies into `state` the stored cold entries named in `wanted` that it
    /// does not hold yet.
    fn fetch(&self, state: &mut State, wanted: &Wanted) -> Result<(), StoreError>;
    /// Durably writes the entries named in `changes` as they are in `state`
    /// (deleting those no longer there). Returns only once durable.
    fn commit(&mut self, state: &State, changes: &Changes) -> Result<(), StoreError>;
    /// Deletes some cold entries that no input can see any more at `now`
    /// (see [`Machine::is_forgotten`] and [`Machine::is_stale_id`]): bounded
    /// work per call, resuming where the last call stopped. Harmless to skip
    /// or to fail, since such entries read as absent anyway.
    fn prune(&mut self, now: Millis, machine: &Machine) -> Result<(), StoreError>;
    /// After a failed commit: make the store usable again if it can be, and
    /// return what is durably stored (the failed commit may or may not be in it).
    fn recover(&mut self) -> Result<State, StoreError> {
        self.load()
    }
}

/// The store contract in memory: what a commit wrote is what `load` (hot
/// entries) and `fetch` (cold ones) return. For tests; `fail_commits` makes
/// commits fail, as a full disk would.
#[cfg(test)]
#[derive(Debug, Default)]
pub struct MemoryStore {
    /// Every entry committed, hot and cold.
    pub committed: State,
    pub commits: u64,
    pub fail_commits: bool,
}

#[cfg(test)]
impl Store for MemoryStore {
    fn load(&self) -> Result<State, StoreError> {
        Ok(self.committed.without_cold())
    }

    fn fetch(&self, state: &mut State, wanted: &Wanted) -> Result<(), StoreError> {
        for id in &wanted.request_ids {
            if let (false, Some(seen)) =
                (state.dedup.contains_key(id), self.committed.dedup.get(id))
            {
                state.dedup.insert(id.clone(), *seen);
            }
        }
        for id in &wanted.run_ids {
            if let (false, Some(run)) = (state.runs.contains_key(id), self.committed.runs.get(id)) {
                state.runs.insert(*id, run.clone());
            }
        }
        Ok(())
    }

    fn commit(&mut self, state: &State, changes: &Changes) -> Result<(), StoreError> {
        if self.fail_commits {
            return Err(StoreError::Db("commit refused (fail_commits)".into()));
        }
        self.committed.copy_entries(state, &changes.keys);
        self.commits += 1;
        Ok(())
    }

    fn prune(&mut self, now: Millis, machine: &Machine) -> Result<(), StoreError> {
        self.committed
            .dedup
            .retain(|_, seen| !machine.is_stale_id(*seen, now));
        self.committed
            .runs
            .retain(|_, run| !machine.is_forgotten(run, now));
        Ok(())
    }
}

#[cfg(test)]
mod tests;
