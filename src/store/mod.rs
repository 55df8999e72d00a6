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
use serde::{Deserialize, Serialize};

mod embedded;

pub use embedded::RedbStore;

/// Where a state stands in the shared log of several replicas: the
/// ordinal of the last entry applied (entries are numbered from 1 without a
/// gap) and its Redis stream id (`ms-seq`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub struct Position {
    pub ordinal: u64,
    pub ms: u64,
    pub seq: u64,
}

impl Position {
    /// The stream id, as Redis writes it.
    pub fn stream_id(&self) -> String {
        format!("{}-{}", self.ms, self.seq)
    }

    /// Reads a stream id (`ms-seq`) with its ordinal.
    pub fn parse(ordinal: u64, stream_id: &str) -> Option<Position> {
        let (ms, seq) = stream_id.split_once('-')?;
        Some(Position {
            ordinal,
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}-{})", self.ordinal, self.ms, self.seq)
    }
}

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

/// What one [`Store::prune`] deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    /// Request ids past `--dedup.ttl`.
    pub request_ids: u64,
    /// Ended runs past their retention.
    pub runs: u64,
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
    fn commit(&mut self, state: &State, changes: &Changes) -> Result<(), StoreError> {
        self.commit_at(state, changes, None)
    }
    /// [`Store::commit`], and with it, in the same transaction, the position
    /// in the shared log that the state now reflects (when it has one).
    fn commit_at(
        &mut self,
        state: &State,
        changes: &Changes,
        position: Option<&Position>,
    ) -> Result<(), StoreError>;
    /// The shared log's position the stored state reflects; `None` for a
    /// store that never followed a log.
    fn position(&self) -> Result<Option<Position>, StoreError>;
    /// Reads the whole state, cold entries included: a snapshot for another
    /// replica.
    fn load_all(&self) -> Result<State, StoreError>;
    /// Durably replaces everything stored by `state` (hot and cold) at
    /// `position`: a replica taking a snapshot.
    fn replace(&mut self, state: &State, position: &Position) -> Result<(), StoreError>;
    /// Deletes some cold entries that no input can see any more at `now`
    /// (see [`Machine::is_forgotten`] and [`Machine::is_stale_id`]): bounded
    /// work per call, resuming where the last call stopped. Harmless to skip
    /// or to fail, since such entries read as absent anyway. Returns what
    /// it deleted.
    fn prune(&mut self, now: Millis, machine: &Machine) -> Result<Pruned, StoreError>;
    /// The bytes the store takes on this machine's disk, where it has a
    /// file of its own.
    fn size_bytes(&self) -> Option<u64> {
        None
    }
    /// After a failed commit: make the store usable again if it can be, and
    /// return what is durably stored (the failed commit may or may not be in it).
    fn recover(&mut self) -> Result<State, StoreError> {
        self.load()
    }
}

/// The store contract in memory: what a commit wrote is what `load` (hot
/// entries) and `fetch` (cold ones) return. For tests; `fail_commits` makes
/// commits fail, as a full disk would, and `fail_reads` makes every read
/// (`fetch`, `load` and so `recover`) fail, as a disk that is gone would.
#[cfg(test)]
#[derive(Debug, Default)]
pub struct MemoryStore {
    /// Every entry committed, hot and cold.
    pub committed: State,
    pub commits: u64,
    pub fail_commits: bool,
    pub fail_reads: bool,
    pub position: Option<Position>,
}

#[cfg(test)]
impl Store for MemoryStore {
    fn load(&self) -> Result<State, StoreError> {
        if self.fail_reads {
            return Err(StoreError::Db("read refused (fail_reads)".into()));
        }
        Ok(self.committed.without_cold())
    }

    fn fetch(&self, state: &mut State, wanted: &Wanted) -> Result<(), StoreError> {
        if self.fail_reads {
            return Err(StoreError::Db("read refused (fail_reads)".into()));
        }
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

    fn commit_at(
        &mut self,
        state: &State,
        changes: &Changes,
        position: Option<&Position>,
    ) -> Result<(), StoreError> {
        if self.fail_commits {
            return Err(StoreError::Db("commit refused (fail_commits)".into()));
        }
        self.committed.copy_entries(state, &changes.keys);
        if let Some(position) = position {
            self.position = Some(*position);
        }
        self.commits += 1;
        Ok(())
    }

    fn position(&self) -> Result<Option<Position>, StoreError> {
        Ok(self.position)
    }

    fn load_all(&self) -> Result<State, StoreError> {
        Ok(self.committed.clone())
    }

    fn replace(&mut self, state: &State, position: &Position) -> Result<(), StoreError> {
        self.committed = state.clone();
        self.position = Some(*position);
        Ok(())
    }

    fn prune(&mut self, now: Millis, machine: &Machine) -> Result<Pruned, StoreError> {
        let (ids, runs) = (self.committed.dedup.len(), self.committed.runs.len());
        self.committed
            .dedup
            .retain(|_, seen| !machine.is_stale_id(*seen, now));
        self.committed
            .runs
            .retain(|_, run| !machine.is_forgotten(run, now));
        Ok(Pruned {
            request_ids: (ids - self.committed.dedup.len()) as u64,
            runs: (runs - self.committed.runs.len()) as u64,
        })
    }
}

#[cfg(test)]
mod tests;
