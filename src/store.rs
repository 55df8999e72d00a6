//! Durable storage of the [`State`], behind the small [`Store`] trait.
//!
//! The state machine says which entries changed ([`Changes`]); a store writes
//! those entries, as they now stand in the state, in one durable transaction.
//! [`RedbStore`] keeps them in a redb database (one table per map of the
//! state, values as JSON) and commits with fsync before returning, so anything
//! acknowledged survives `kill -9`. [`MemoryStore`] is the same contract in
//! memory, for tests. A shared backend for several replicas would be a third
//! implementation of the same trait.

use crate::outcome::Outcome;
use crate::state::{Changes, Key, State};
use crate::webhook::Project;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::{Path, PathBuf};

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

fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Db(e.to_string())
}

/// Where the state lives between restarts.
pub trait Store: Send {
    /// Reads the whole state.
    fn load(&self) -> Result<State, StoreError>;
    /// Durably writes the entries named in `changes` as they are in `state`
    /// (deleting those no longer there). Returns only once durable.
    fn commit(&mut self, state: &State, changes: &Changes) -> Result<(), StoreError>;
    /// After a failed commit: make the store usable again if it can be, and
    /// return what is durably stored (the failed commit may or may not be in it).
    fn recover(&mut self) -> Result<State, StoreError> {
        self.load()
    }
}

const RUNS: TableDefinition<u64, &[u8]> = TableDefinition::new("runs");
const DEDUP: TableDefinition<&str, i64> = TableDefinition::new("dedup");
const LOAD_TESTS: TableDefinition<u64, &[u8]> = TableDefinition::new("load_tests");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
const HISTOGRAMS: TableDefinition<&str, &[u8]> = TableDefinition::new("histograms");
const LAST_EVENT: TableDefinition<&str, i64> = TableDefinition::new("last_event");
const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");

/// The layout version written in `meta`; a store of another version is refused.
const SCHEMA_VERSION: &str = "1";

/// The state in a redb database file, `loadimpact.redb` in the storage directory.
pub struct RedbStore {
    /// `None` after an I/O error closed it, until `recover` reopens it.
    db: Option<Database>,
    path: PathBuf,
}

impl RedbStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<RedbStore, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Db(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join("loadimpact.redb");
        let db = open_db(&path)?;
        Ok(RedbStore { db: Some(db), path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn db(&self) -> Result<&Database, StoreError> {
        self.db
            .as_ref()
            .ok_or_else(|| StoreError::Db(format!("{} is closed", self.path.display())))
    }
}

/// Opens the database file and makes sure every table exists and the layout
/// version is this build's.
fn open_db(path: &Path) -> Result<Database, StoreError> {
    let db = Database::create(path)
        .map_err(|e| StoreError::Db(format!("cannot open {}: {e}", path.display())))?;
    let txn = db.begin_write().map_err(db_err)?;
    {
        let mut meta = txn.open_table(META).map_err(db_err)?;
        let version = meta
            .get("schema_version")
            .map_err(db_err)?
            .map(|v| v.value().to_owned());
        match version {
            None => {
                meta.insert("schema_version", SCHEMA_VERSION)
                    .map_err(db_err)?;
            }
            Some(v) if v == SCHEMA_VERSION => {}
            Some(v) => {
                return Err(StoreError::Db(format!(
                    "{} has schema version {v}; this build reads version {SCHEMA_VERSION}",
                    path.display()
                )));
            }
        }
        // Create every table so that reads never meet a missing one.
        txn.open_table(RUNS).map_err(db_err)?;
        txn.open_table(DEDUP).map_err(db_err)?;
        txn.open_table(LOAD_TESTS).map_err(db_err)?;
        txn.open_table(COUNTERS).map_err(db_err)?;
        txn.open_table(HISTOGRAMS).map_err(db_err)?;
        txn.open_table(LAST_EVENT).map_err(db_err)?;
        txn.open_table(OUTBOX).map_err(db_err)?;
    }
    txn.commit().map_err(db_err)?;
    Ok(db)
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(db_err)
}

fn from_json<T: serde::de::DeserializeOwned>(
    table: &'static str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        table,
        message: e.to_string(),
    })
}

/// Calls `f` with every entry of `table`.
fn each<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &redb::ReadTransaction,
    table: TableDefinition<K, V>,
    mut f: impl for<'a> FnMut(K::SelfType<'a>, V::SelfType<'a>) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    for entry in txn
        .open_table(table)
        .map_err(db_err)?
        .iter()
        .map_err(db_err)?
    {
        let (k, v) = entry.map_err(db_err)?;
        f(k.value(), v.value())?;
    }
    Ok(())
}

/// Writes `value` as JSON under `key`, or removes the key when the state no
/// longer has it.
fn put_or_remove<T: serde::Serialize>(
    table: &mut redb::Table<'_, u64, &'static [u8]>,
    key: u64,
    value: Option<&T>,
) -> Result<(), StoreError> {
    match value {
        Some(value) => table.insert(key, to_json(value)?.as_slice()).map(drop),
        None => table.remove(key).map(drop),
    }
    .map_err(db_err)
}

fn key_json<T: serde::Serialize>(key: &T) -> Result<String, StoreError> {
    serde_json::to_string(key).map_err(db_err)
}

impl Store for RedbStore {
    /// redb refuses every write after an I/O error until the database is
    /// reopened: close it, reopen it (redb repairs what it must) and read back
    /// what is durable.
    fn recover(&mut self) -> Result<State, StoreError> {
        self.db = None;
        self.db = Some(open_db(&self.path)?);
        self.load()
    }

    fn load(&self) -> Result<State, StoreError> {
        let txn = self.db()?.begin_read().map_err(db_err)?;
        let mut s = State::default();
        each(&txn, RUNS, |k, v| {
            s.runs.insert(k, from_json("runs", v)?);
            Ok(())
        })?;
        each(&txn, DEDUP, |k, v| {
            s.dedup.insert(k.to_owned(), v);
            Ok(())
        })?;
        each(&txn, LOAD_TESTS, |k, v| {
            s.load_tests.insert(k, from_json("load_tests", v)?);
            Ok(())
        })?;
        each(&txn, COUNTERS, |k, v| {
            s.counters.insert(from_json("counters", k.as_bytes())?, v);
            Ok(())
        })?;
        each(&txn, HISTOGRAMS, |k, v| {
            let key: (Project, Outcome) = from_json("histograms", k.as_bytes())?;
            s.histograms.insert(key, from_json("histograms", v)?);
            Ok(())
        })?;
        each(&txn, LAST_EVENT, |k, v| {
            s.last_event.insert(k.to_owned(), v);
            Ok(())
        })?;
        each(&txn, OUTBOX, |k, v| {
            s.outbox.insert(k, from_json("outbox", v)?);
            Ok(())
        })?;
        Ok(s)
    }

    fn commit(&mut self, state: &State, changes: &Changes) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        // Durability::Immediate is redb's default: commit() returns after fsync.
        let txn = self.db()?.begin_write().map_err(db_err)?;
        {
            let mut runs = txn.open_table(RUNS).map_err(db_err)?;
            let mut dedup = txn.open_table(DEDUP).map_err(db_err)?;
            let mut load_tests = txn.open_table(LOAD_TESTS).map_err(db_err)?;
            let mut counters = txn.open_table(COUNTERS).map_err(db_err)?;
            let mut histograms = txn.open_table(HISTOGRAMS).map_err(db_err)?;
            let mut last_event = txn.open_table(LAST_EVENT).map_err(db_err)?;
            let mut outbox = txn.open_table(OUTBOX).map_err(db_err)?;
            for key in &changes.keys {
                match key {
                    Key::Run(id) => put_or_remove(&mut runs, *id, state.runs.get(id))?,
                    Key::Dedup(id) => match state.dedup.get(id) {
                        Some(seen) => {
                            dedup.insert(id.as_str(), *seen).map_err(db_err)?;
                        }
                        None => {
                            dedup.remove(id.as_str()).map_err(db_err)?;
                        }
                    },
                    Key::LoadTest(id) => {
                        put_or_remove(&mut load_tests, *id, state.load_tests.get(id))?
                    }
                    Key::Counter(counter) => {
                        let k = key_json(counter)?;
                        counters
                            .insert(k.as_str(), state.counter(counter))
                            .map_err(db_err)?;
                    }
                    Key::Histogram(project, outcome) => {
                        let k = key_json(&(project, outcome))?;
                        if let Some(h) = state.histograms.get(&(*project, *outcome)) {
                            histograms
                                .insert(k.as_str(), to_json(h)?.as_slice())
                                .map_err(db_err)?;
                        }
                    }
                    Key::Outbox(id) => put_or_remove(&mut outbox, *id, state.outbox.get(id))?,
                    Key::LastEvent(event) => {
                        if let Some(at) = state.last_event.get(event) {
                            last_event.insert(event.as_str(), *at).map_err(db_err)?;
                        }
                    }
                }
            }
        }
        txn.commit().map_err(db_err)
    }
}

/// The store contract in memory: what a commit wrote is what `load` returns.
/// For tests; `fail_commits` makes commits fail, as a full disk would.
#[derive(Debug, Default)]
pub struct MemoryStore {
    pub committed: State,
    pub commits: u64,
    pub fail_commits: bool,
}

impl Store for MemoryStore {
    fn load(&self) -> Result<State, StoreError> {
        Ok(self.committed.clone())
    }

    fn commit(&mut self, state: &State, changes: &Changes) -> Result<(), StoreError> {
        if self.fail_commits {
            return Err(StoreError::Db("commit refused (fail_commits)".into()));
        }
        for key in &changes.keys {
            copy_entry(&mut self.committed, state, key);
        }
        self.commits += 1;
        Ok(())
    }
}

/// Copies one entry (or its absence) from `from` to `to`.
fn copy_entry(to: &mut State, from: &State, key: &Key) {
    to.restore(key, from.snapshot(key));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Input, Machine};
    use crate::webhook::{Event, RunEvent, RunEventKind};

    fn run_event(kind: RunEventKind, run: u64, status: i64) -> Input {
        Input::Webhook {
            request_id: Some(format!("{run}-{}", kind.name())),
            event: Event::Run(RunEvent {
                kind,
                load_test_run_id: run,
                load_test_id: 9,
                project: Project {
                    organization_id: 1,
                    project_id: 2,
                },
                user_id: Some(3),
                name: Some("name \"quoted\"".into()),
                status,
                status_text: None,
            }),
            at: 1_000 + run as i64,
        }
    }

    #[test]
    fn redb_round_trips_every_table_and_deletes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let machine = Machine::default();
        let mut state = State::default();
        let mut store = RedbStore::open(dir.path()).expect("open");
        let mut changes = Changes::default();
        for run in 1..=5 {
            machine.apply(
                &mut state,
                run_event(RunEventKind::Started, run, 2),
                &mut changes,
            );
        }
        for run in 1..=3 {
            machine.apply(
                &mut state,
                run_event(RunEventKind::Finished, run, 12),
                &mut changes,
            );
        }
        machine.apply(&mut state, Input::Rejected { code: 400 }, &mut changes);
        store.commit(&state, &changes).expect("commit");
        drop(store);

        let store = RedbStore::open(dir.path()).expect("reopen");
        assert_eq!(store.load().expect("load"), state);

        // Forget everything: deletions must reach the store too.
        let mut store = store;
        let mut changes = Changes::default();
        // The first tick expires the runs still running, the second forgets them.
        machine.apply(&mut state, Input::Tick { now: i64::MAX / 4 }, &mut changes);
        machine.apply(&mut state, Input::Tick { now: i64::MAX / 2 }, &mut changes);
        assert!(state.runs.is_empty() && state.dedup.is_empty() && state.load_tests.is_empty());
        store.commit(&state, &changes).expect("commit");
        assert_eq!(store.load().expect("load"), state);
    }

    #[test]
    fn memory_store_keeps_the_same_contract() {
        let machine = Machine::default();
        let mut state = State::default();
        let mut store = MemoryStore::default();
        let mut changes = Changes::default();
        machine.apply(
            &mut state,
            run_event(RunEventKind::Started, 1, 2),
            &mut changes,
        );
        store.commit(&state, &changes).expect("commit");
        assert_eq!(store.load().expect("load"), state);
    }
}
