//! The embedded store: the state in one redb database file, one table per
//! map of the state, committed with fsync before a commit returns. Its
//! layout is an API boundary (see docs/architecture.md): a change to it needs
//! a new [`SCHEMA_VERSION`] and a migration from the previous layout.

use super::{Position, Pruned, Store, StoreError};
use crate::clock::Millis;
use crate::outcome::Outcome;
use crate::state::{Changes, Key, Machine, State, Wanted};
use crate::webhook::Project;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::{Path, PathBuf};

fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Db(e.to_string())
}

/// How many cold entries one [`Store::prune`] looks at, per table. A prune
/// runs once a tick (a second) on the writer's thread, so deliveries that
/// arrive meanwhile wait for it: 512 took 0.6 to 1.2 ms, against 2.7 to
/// 4.6 ms for 2,048 (measured with bench/steady.lua on tmpfs). It still
/// keeps up with 512 new request ids and 512 ended runs a second, about
/// 44 million of each a day.
const PRUNE_BATCH: usize = 512;

/// redb's page cache. The cold tables are read a few pages per delivery;
/// the operating system's page cache serves the rest, so the process's
/// memory does not grow with the store (redb's default is 1 GiB; 8 MiB
/// cost 7 MiB resident and no measurable ingest).
const CACHE_BYTES: usize = 1024 * 1024;

/// Runs now running (hot).
const RUNS: TableDefinition<u64, &[u8]> = TableDefinition::new("runs");
/// Runs that have ended, kept to recognise a repeat (cold).
const ENDED_RUNS: TableDefinition<u64, &[u8]> = TableDefinition::new("ended_runs");
/// Request id -> when first seen (cold).
const DEDUP: TableDefinition<&str, i64> = TableDefinition::new("dedup");
const LOAD_TESTS: TableDefinition<u64, &[u8]> = TableDefinition::new("load_tests");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
const HISTOGRAMS: TableDefinition<&str, &[u8]> = TableDefinition::new("histograms");
const LAST_EVENT: TableDefinition<&str, i64> = TableDefinition::new("last_event");
const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");
/// (organization id, project id, finish code) -> how many finishes have it.
const FINISHES: TableDefinition<(u64, u64, i64), u64> = TableDefinition::new("finishes");
const RECENT: TableDefinition<u64, &[u8]> = TableDefinition::new("recent");
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
/// The key in `meta` of the shared log's position the state reflects.
const POSITION: &str = "log_position";

/// The layout version written in `meta`. Older layouts are migrated on open
/// (1: durations as float seconds, one table for all runs; 2: started runs
/// counted by project alone); a newer one is refused.
const SCHEMA_VERSION: &str = "3";

/// The state in a redb database file, `loadimpact.redb` in the storage directory.
pub struct RedbStore {
    /// `None` after an I/O error closed it, until `recover` reopens it.
    db: Option<Database>,
    path: PathBuf,
    /// Where the next prune resumes in each cold table.
    prune_from: PruneCursor,
}

#[derive(Debug, Default)]
struct PruneCursor {
    dedup: Option<String>,
    ended_runs: Option<u64>,
}

impl RedbStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<RedbStore, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Db(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join("loadimpact.redb");
        let db = open_db(&path)?;
        Ok(RedbStore {
            db: Some(db),
            path,
            prune_from: PruneCursor::default(),
        })
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

/// Opens the database file, makes sure every table exists, and brings an
/// older layout up to this build's.
fn open_db(path: &Path) -> Result<Database, StoreError> {
    let db = Database::builder()
        .set_cache_size(CACHE_BYTES)
        .create(path)
        .map_err(|e| StoreError::Db(format!("cannot open {}: {e}", path.display())))?;
    let txn = db.begin_write().map_err(db_err)?;
    {
        let mut meta = txn.open_table(META).map_err(db_err)?;
        let version = meta
            .get("schema_version")
            .map_err(db_err)?
            .map(|v| v.value().to_owned());
        match version.as_deref() {
            None => {}
            Some(SCHEMA_VERSION) => {}
            Some("1") => {
                migrate_from_v1(&txn)?;
                migrate_from_v2(&txn)?;
                tracing::info!(path = %path.display(), "store migrated from layout 1 to 3");
            }
            Some("2") => {
                migrate_from_v2(&txn)?;
                tracing::info!(path = %path.display(), "store migrated from layout 2 to 3");
            }
            Some(v) => {
                return Err(StoreError::Db(format!(
                    "{} has schema version {v}; this build reads versions 1 to {SCHEMA_VERSION}",
                    path.display()
                )));
            }
        }
        meta.insert("schema_version", SCHEMA_VERSION)
            .map_err(db_err)?;
        // Create every table so that reads never meet a missing one.
        txn.open_table(RUNS).map_err(db_err)?;
        txn.open_table(ENDED_RUNS).map_err(db_err)?;
        txn.open_table(DEDUP).map_err(db_err)?;
        txn.open_table(LOAD_TESTS).map_err(db_err)?;
        txn.open_table(COUNTERS).map_err(db_err)?;
        txn.open_table(HISTOGRAMS).map_err(db_err)?;
        txn.open_table(LAST_EVENT).map_err(db_err)?;
        txn.open_table(OUTBOX).map_err(db_err)?;
        txn.open_table(FINISHES).map_err(db_err)?;
        txn.open_table(RECENT).map_err(db_err)?;
    }
    txn.commit().map_err(db_err)?;
    Ok(db)
}

/// Layout 1 kept durations as float seconds (`sum`, `last_duration_seconds`)
/// and every run in `runs`. Durations become whole milliseconds; ended runs
/// move to `ended_runs`. The abort window and the recent runs, derived from
/// the runs in layout 1, start afresh.
fn migrate_from_v1(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
    use serde_json::Value;
    let to_millis = |seconds: &Value| {
        seconds
            .as_f64()
            .map(|s| serde_json::json!((s * 1000.0).round().max(0.0) as u64))
    };
    let mut histograms = txn.open_table(HISTOGRAMS).map_err(db_err)?;
    let mut updated = Vec::new();
    for entry in histograms.iter().map_err(db_err)? {
        let (k, v) = entry.map_err(db_err)?;
        let mut h: Value = from_json("histograms", v.value())?;
        if let Some(object) = h.as_object_mut() {
            let sum = object.remove("sum").and_then(|s| to_millis(&s));
            object.insert("sum_millis".into(), sum.unwrap_or(serde_json::json!(0)));
        }
        updated.push((k.value().to_owned(), to_json(&h)?));
    }
    for (k, v) in updated {
        histograms
            .insert(k.as_str(), v.as_slice())
            .map_err(db_err)?;
    }
    let mut load_tests = txn.open_table(LOAD_TESTS).map_err(db_err)?;
    let mut updated = Vec::new();
    for entry in load_tests.iter().map_err(db_err)? {
        let (k, v) = entry.map_err(db_err)?;
        let mut t: Value = from_json("load_tests", v.value())?;
        if let Some(object) = t.as_object_mut() {
            let last = object
                .remove("last_duration_seconds")
                .and_then(|s| to_millis(&s));
            object.insert("last_duration_millis".into(), last.unwrap_or(Value::Null));
        }
        updated.push((k.value(), to_json(&t)?));
    }
    for (k, v) in updated {
        load_tests.insert(k, v.as_slice()).map_err(db_err)?;
    }
    let mut runs = txn.open_table(RUNS).map_err(db_err)?;
    let mut ended = txn.open_table(ENDED_RUNS).map_err(db_err)?;
    let mut moved = Vec::new();
    for entry in runs.iter().map_err(db_err)? {
        let (k, v) = entry.map_err(db_err)?;
        let run: crate::state::Run = from_json("runs", v.value())?;
        if !run.is_running() {
            moved.push((k.value(), v.value().to_vec()));
        }
    }
    for (k, v) in moved {
        ended.insert(k, v.as_slice()).map_err(db_err)?;
        runs.remove(k).map_err(db_err)?;
    }
    Ok(())
}

/// Layout 2 counted started runs by project alone; layout 3 by project and
/// trigger. Every stored start predates the trigger, so it is `unknown`.
fn migrate_from_v2(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
    use serde_json::Value;
    let mut counters = txn.open_table(COUNTERS).map_err(db_err)?;
    let mut moved = Vec::new();
    for entry in counters.iter().map_err(db_err)? {
        let (k, v) = entry.map_err(db_err)?;
        let key: Value = from_json("counters", k.value().as_bytes())?;
        if let Some(project) = key.get("Started").filter(|p| p.is_object()) {
            let new = serde_json::json!({ "Started": [project, "unknown"] });
            moved.push((k.value().to_owned(), key_json(&new)?, v.value()));
        }
    }
    for (old, new, count) in moved {
        counters.remove(old.as_str()).map_err(db_err)?;
        counters.insert(new.as_str(), count).map_err(db_err)?;
    }
    Ok(())
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(db_err)
}

/// What a prune reads of a stored run: only the fields its retention
/// depends on. Decoding these alone skips building the run's strings, which
/// was most of a prune's time (about 2.6 us a run, 5 ms for 2,048).
#[derive(serde::Deserialize)]
struct Retention {
    finished_at: Option<Millis>,
    expired_at: Option<Millis>,
    last_event_at: Millis,
}

impl Retention {
    fn has_ended(&self) -> bool {
        self.finished_at.is_some() || self.expired_at.is_some()
    }
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

/// Leaves `table` empty (deleted and made anew), within `txn`.
fn empty<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &redb::WriteTransaction,
    table: TableDefinition<K, V>,
) -> Result<(), StoreError> {
    txn.delete_table(table).map_err(db_err)?;
    txn.open_table(table).map_err(db_err)?;
    Ok(())
}

/// Records in `meta`, within `txn`, the shared log's position the state
/// written with it reflects.
fn write_position(txn: &redb::WriteTransaction, position: &Position) -> Result<(), StoreError> {
    let text = serde_json::to_string(position).map_err(db_err)?;
    let mut meta = txn.open_table(META).map_err(db_err)?;
    meta.insert(POSITION, text.as_str()).map_err(db_err)?;
    Ok(())
}

/// Writes the entries named in `changes` as they are in `state` (deleting
/// those no longer there), within `txn`.
fn write_entries(
    txn: &redb::WriteTransaction,
    state: &State,
    changes: &Changes,
) -> Result<(), StoreError> {
    let mut runs = txn.open_table(RUNS).map_err(db_err)?;
    let mut ended = txn.open_table(ENDED_RUNS).map_err(db_err)?;
    let mut dedup = txn.open_table(DEDUP).map_err(db_err)?;
    let mut load_tests = txn.open_table(LOAD_TESTS).map_err(db_err)?;
    let mut counters = txn.open_table(COUNTERS).map_err(db_err)?;
    let mut histograms = txn.open_table(HISTOGRAMS).map_err(db_err)?;
    let mut last_event = txn.open_table(LAST_EVENT).map_err(db_err)?;
    let mut outbox = txn.open_table(OUTBOX).map_err(db_err)?;
    let mut finishes = txn.open_table(FINISHES).map_err(db_err)?;
    let mut recent = txn.open_table(RECENT).map_err(db_err)?;
    for key in &changes.keys {
        match key {
            Key::Run(id) => {
                // A run lives in exactly one of the two tables.
                let run = state.runs.get(id);
                let running = run.filter(|r| r.is_running());
                let over = run.filter(|r| !r.is_running());
                put_or_remove(&mut runs, *id, running)?;
                put_or_remove(&mut ended, *id, over)?;
            }
            Key::Dedup(id) => match state.dedup.get(id) {
                Some(seen) => {
                    dedup.insert(id.as_str(), *seen).map_err(db_err)?;
                }
                None => {
                    dedup.remove(id.as_str()).map_err(db_err)?;
                }
            },
            Key::LoadTest(id) => put_or_remove(&mut load_tests, *id, state.load_tests.get(id))?,
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
            Key::Finish(project, code) => {
                let key = (project.organization_id, project.project_id, *code);
                match state.finish_count(project, *code) {
                    0 => finishes.remove(key).map(drop),
                    n => finishes.insert(key, n as u64).map(drop),
                }
                .map_err(db_err)?
            }
            Key::Recent(id) => put_or_remove(&mut recent, *id, state.recent.get(id))?,
        }
    }
    Ok(())
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
        each(&txn, FINISHES, |(organization_id, project_id, code), n| {
            let project = Project {
                organization_id,
                project_id,
            };
            // Keys come in order, so each project's codes stay sorted.
            let codes = s.finishes.entry(project).or_default();
            codes.extend(std::iter::repeat_n(code, usize::try_from(n).unwrap_or(0)));
            Ok(())
        })?;
        each(&txn, RECENT, |k, v| {
            s.recent.insert(k, from_json("recent", v)?);
            Ok(())
        })?;
        Ok(s)
    }

    fn fetch(&self, state: &mut State, wanted: &Wanted) -> Result<(), StoreError> {
        if wanted.request_ids.is_empty() && wanted.run_ids.is_empty() {
            return Ok(());
        }
        let txn = self.db()?.begin_read().map_err(db_err)?;
        let dedup = txn.open_table(DEDUP).map_err(db_err)?;
        for id in &wanted.request_ids {
            if !state.dedup.contains_key(id) {
                if let Some(seen) = dedup.get(id.as_str()).map_err(db_err)? {
                    state.dedup.insert(id.clone(), seen.value());
                }
            }
        }
        let ended = txn.open_table(ENDED_RUNS).map_err(db_err)?;
        for id in &wanted.run_ids {
            if !state.runs.contains_key(id) {
                if let Some(run) = ended.get(*id).map_err(db_err)? {
                    state
                        .runs
                        .insert(*id, from_json("ended_runs", run.value())?);
                }
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
        if changes.is_empty() && position.is_none() {
            return Ok(());
        }
        // Durability::Immediate is redb's default: commit() returns after fsync.
        let txn = self.db()?.begin_write().map_err(db_err)?;
        write_entries(&txn, state, changes)?;
        if let Some(position) = position {
            write_position(&txn, position)?;
        }
        txn.commit().map_err(db_err)
    }

    fn position(&self) -> Result<Option<Position>, StoreError> {
        let txn = self.db()?.begin_read().map_err(db_err)?;
        let meta = txn.open_table(META).map_err(db_err)?;
        let text = meta.get(POSITION).map_err(db_err)?;
        text.map(|t| from_json("meta", t.value().as_bytes()))
            .transpose()
    }

    fn load_all(&self) -> Result<State, StoreError> {
        let mut state = self.load()?;
        let txn = self.db()?.begin_read().map_err(db_err)?;
        each(&txn, DEDUP, |k, v| {
            state.dedup.insert(k.to_owned(), v);
            Ok(())
        })?;
        each(&txn, ENDED_RUNS, |k, v| {
            state.runs.insert(k, from_json("ended_runs", v)?);
            Ok(())
        })?;
        Ok(state)
    }

    fn replace(&mut self, state: &State, position: &Position) -> Result<(), StoreError> {
        let txn = self.db()?.begin_write().map_err(db_err)?;
        for table in [RUNS, ENDED_RUNS, LOAD_TESTS, OUTBOX, RECENT] {
            empty(&txn, table)?;
        }
        empty(&txn, DEDUP)?;
        empty(&txn, HISTOGRAMS)?;
        empty(&txn, COUNTERS)?;
        empty(&txn, LAST_EVENT)?;
        empty(&txn, FINISHES)?;
        write_entries(&txn, state, &Changes::writing(state.keys()))?;
        write_position(&txn, position)?;
        txn.commit().map_err(db_err)
    }

    fn size_bytes(&self) -> Option<u64> {
        std::fs::metadata(&self.path).ok().map(|m| m.len())
    }

    fn prune(&mut self, now: Millis, machine: &Machine) -> Result<Pruned, StoreError> {
        // Looked for in a read transaction: most ticks find nothing stale,
        // and then there is nothing to write and no fsync.
        let (stale, forgotten) = {
            let txn = self.db()?.begin_read().map_err(db_err)?;
            let dedup = txn.open_table(DEDUP).map_err(db_err)?;
            let from = self.prune_from.dedup.take().unwrap_or_default();
            let (mut stale, mut seen, mut last) = (Vec::new(), 0, None);
            for entry in dedup
                .range(from.as_str()..)
                .map_err(db_err)?
                .take(PRUNE_BATCH)
            {
                let (k, v) = entry.map_err(db_err)?;
                if machine.is_stale_id(v.value(), now) {
                    stale.push(k.value().to_owned());
                }
                last = Some(k);
                seen += 1;
            }
            // Resume just after the last key looked at, or from the start
            // once the end was reached.
            self.prune_from.dedup = last.filter(|_| seen == PRUNE_BATCH).map(|k| {
                let mut k = k.value().to_owned();
                k.push('\0');
                k
            });

            let ended = txn.open_table(ENDED_RUNS).map_err(db_err)?;
            let from = self.prune_from.ended_runs.take().unwrap_or(0);
            let (mut forgotten, mut seen, mut last) = (Vec::new(), 0, None);
            for entry in ended.range(from..).map_err(db_err)?.take(PRUNE_BATCH) {
                let (k, v) = entry.map_err(db_err)?;
                let run: Retention = from_json("ended_runs", v.value())?;
                if machine.is_past_retention(run.has_ended(), run.last_event_at, now) {
                    forgotten.push(k.value());
                }
                last = Some(k.value());
                seen += 1;
            }
            self.prune_from.ended_runs = last
                .filter(|_| seen == PRUNE_BATCH)
                .and_then(|k| k.checked_add(1));
            (stale, forgotten)
        };
        if stale.is_empty() && forgotten.is_empty() {
            return Ok(Pruned::default());
        }
        let pruned = Pruned {
            request_ids: stale.len() as u64,
            runs: forgotten.len() as u64,
        };
        // This thread is the store's only writer, so nothing changed since
        // the read: what it found stale is still stale.
        let txn = self.db()?.begin_write().map_err(db_err)?;
        {
            let mut dedup = txn.open_table(DEDUP).map_err(db_err)?;
            for id in &stale {
                dedup.remove(id.as_str()).map_err(db_err)?;
            }
            let mut ended = txn.open_table(ENDED_RUNS).map_err(db_err)?;
            for id in forgotten {
                ended.remove(id).map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)?;
        Ok(pruned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Input, Machine};
    use crate::store::MemoryStore;
    use crate::webhook::{Event, RunEvent, RunEventKind};

    fn run_event(kind: RunEventKind, run: u64, status: i64) -> Input {
        Input::Webhook {
            request_ids: vec![format!("{run}-{}", kind.name())],
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
                ..RunEvent::default()
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
        check_contract(&store, &state);

        // Forget everything: deletions must reach the store too.
        let mut store = store;
        let mut changes = Changes::default();
        // The first tick expires the runs still running, the second forgets them.
        machine.apply(&mut state, Input::Tick { now: i64::MAX / 4 }, &mut changes);
        machine.apply(&mut state, Input::Tick { now: i64::MAX / 2 }, &mut changes);
        assert!(state.runs.is_empty() && state.dedup.is_empty() && state.load_tests.is_empty());
        store.commit(&state, &changes).expect("commit");
        check_contract(&store, &state);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

        /// A replica's snapshot: the whole state (cold entries too) read
        /// from one store, sent as JSON, and written into another with
        /// `replace`, reads back exactly, with its position; and the inputs
        /// of the shared log survive JSON unchanged.
        #[test]
        fn a_snapshot_moves_the_whole_state_to_another_store(
            steps in proptest::collection::vec(crate::state::testing::timed_step(), 1..60),
        ) {
            let machine = crate::state::testing::short_machine();
            let (mut state, mut changes, mut at) = (State::default(), Changes::default(), 0);
            for (i, (step, wait)) in steps.iter().enumerate() {
                at += wait;
                let input = match step {
                    Some(step) => crate::state::testing::input_of(step, i, at),
                    None => Input::Tick { now: at },
                };
                let json = serde_json::to_vec(&input).expect("input to JSON");
                let back: Input = serde_json::from_slice(&json).expect("input from JSON");
                proptest::prop_assert_eq!(&back, &input);
                machine.apply(&mut state, input, &mut changes);
            }
            let (from, to) = (tempfile::tempdir().expect("dir"), tempfile::tempdir().expect("dir"));
            let mut source = RedbStore::open(from.path()).expect("open");
            let position = Position { ordinal: 7, ms: 1_700_000_000_000, seq: 3 };
            source.commit_at(&state, &changes, Some(&position)).expect("commit");
            let whole = source.load_all().expect("load_all");
            proptest::prop_assert_eq!(&whole, &state);
            let json = serde_json::to_vec(&whole).expect("state to JSON");
            let sent: State = serde_json::from_slice(&json).expect("state from JSON");
            proptest::prop_assert_eq!(&sent, &state);
            // The target held something else before: replace leaves none of it.
            let mut target = RedbStore::open(to.path()).expect("open");
            let mut other = State::default();
            let mut other_changes = Changes::default();
            machine.apply(&mut other, run_event(RunEventKind::Started, 999_999, 2), &mut other_changes);
            target.commit(&other, &other_changes).expect("commit");
            target.replace(&sent, &source.position().expect("position").expect("some")).expect("replace");
            proptest::prop_assert_eq!(target.load_all().expect("load_all"), state.clone());
            proptest::prop_assert_eq!(target.position().expect("position"), Some(position));
            drop(target);
            let reopened = RedbStore::open(to.path()).expect("reopen");
            proptest::prop_assert_eq!(reopened.load().expect("load"), state.without_cold());
        }
    }

    #[test]
    fn the_position_is_kept_with_the_commit_and_absent_before() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = RedbStore::open(dir.path()).expect("open");
        assert_eq!(store.position().expect("position"), None);
        let position = Position {
            ordinal: 1,
            ms: 5,
            seq: 0,
        };
        // A position alone (its entry changed nothing) is stored too.
        store
            .commit_at(&State::default(), &Changes::default(), Some(&position))
            .expect("commit");
        drop(store);
        let store = RedbStore::open(dir.path()).expect("reopen");
        assert_eq!(store.position().expect("position"), Some(position));
    }

    /// What `load` returns is the hot part of `state`, and `fetch` brings
    /// back every cold entry it has.
    fn check_contract(store: &dyn Store, state: &State) {
        let mut loaded = store.load().expect("load");
        assert_eq!(loaded, state.without_cold());
        let wanted = Wanted {
            request_ids: state.dedup.keys().cloned().collect(),
            run_ids: (0..=10).collect(),
        };
        store.fetch(&mut loaded, &wanted).expect("fetch");
        assert_eq!(&loaded, state);
    }

    #[test]
    fn a_layout_1_store_is_migrated() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("loadimpact.redb");
        {
            let db = Database::create(&path).expect("create");
            let txn = db.begin_write().expect("write");
            {
                let mut meta = txn.open_table(META).expect("meta");
                meta.insert("schema_version", "1").expect("version");
                let mut c = txn.open_table(COUNTERS).expect("counters");
                let started = r#"{"Started":{"organization_id":1,"project_id":2}}"#;
                c.insert(started, 5).expect("counter");
                let mut h = txn.open_table(HISTOGRAMS).expect("histograms");
                let key = r#"[{"organization_id":1,"project_id":2},"finished"]"#;
                let old =
                    r#"{"buckets":[1,0,0,0,0,0,0,0,0,0,0,0,0,0,1],"sum":100000.239,"count":2}"#;
                h.insert(key, old.as_bytes()).expect("histogram");
                let mut t = txn.open_table(LOAD_TESTS).expect("load tests");
                let old = r#"{"project":{"organization_id":1,"project_id":2},"name":null,"last_status":3,"last_seen":5,"finished":{},"last_duration_seconds":0.239}"#;
                t.insert(7, old.as_bytes()).expect("load test");
                let mut runs = txn.open_table(RUNS).expect("runs");
                let ended = r#"{"project":{"organization_id":1,"project_id":2},"load_test_id":7,"user_id":null,"name":null,"started_at":1,"finished_at":5,"expired_at":null,"status":3,"status_text":null,"outcome":"finished","last_event_at":5}"#;
                runs.insert(1, ended.as_bytes()).expect("run");
                let running = r#"{"project":{"organization_id":1,"project_id":2},"load_test_id":7,"user_id":null,"name":null,"started_at":1,"finished_at":null,"expired_at":null,"status":null,"status_text":null,"outcome":null,"last_event_at":1}"#;
                runs.insert(2, running.as_bytes()).expect("run");
            }
            txn.commit().expect("commit");
        }
        let store = RedbStore::open(dir.path()).expect("migrated");
        let mut state = store.load().expect("load");
        let project = Project {
            organization_id: 1,
            project_id: 2,
        };
        let h = &state.histograms[&(project, Outcome::Finished)];
        assert_eq!((h.sum_millis, h.count), (100_000_239, 2));
        assert_eq!(state.load_tests[&7].last_duration_millis, Some(239));
        let started = crate::state::CounterKey::Started(project, crate::webhook::Trigger::Unknown);
        assert_eq!(state.counter(&started), 5, "{:?}", state.counters);
        assert_eq!(
            state.runs.keys().collect::<Vec<_>>(),
            [&2],
            "only the running run is hot"
        );
        let wanted = Wanted {
            run_ids: vec![1],
            ..Wanted::default()
        };
        store.fetch(&mut state, &wanted).expect("fetch");
        assert_eq!(state.runs[&1].finished_at, Some(5));
        drop(store);
        // Opening it again finds the current layout and changes nothing.
        let store = RedbStore::open(dir.path()).expect("reopen");
        assert_eq!(store.load().expect("load").histograms.len(), 1);
    }

    #[test]
    fn prune_forgets_only_what_no_input_can_see() {
        let dir = tempfile::tempdir().expect("tempdir");
        let machine = Machine::default();
        let mut state = State::default();
        let mut store = RedbStore::open(dir.path()).expect("open");
        let mut changes = Changes::default();
        for run in 1..=3 {
            machine.apply(
                &mut state,
                run_event(RunEventKind::Finished, run, 12),
                &mut changes,
            );
        }
        store.commit(&state, &changes).expect("commit");
        let everything = Wanted {
            request_ids: state.dedup.keys().cloned().collect(),
            run_ids: vec![1, 2, 3],
        };
        let cold = |store: &RedbStore| {
            let mut s = State::default();
            store.fetch(&mut s, &everything).expect("fetch");
            (s.dedup.len(), s.runs.len())
        };
        // Within every retention: nothing goes, and nothing is written.
        let path = store.path().to_owned();
        let file = || std::fs::read(&path).expect("read the store file");
        let before = file();
        let pruned = store
            .prune(1_000 + machine.dedup_ttl - 10, &machine)
            .expect("prune");
        assert_eq!(pruned, Pruned::default());
        assert!(
            file() == before,
            "a prune that found nothing wrote to the file"
        );
        assert_eq!(cold(&store), (3, 3));
        // Past them: everything goes, and the hot part stays.
        let pruned = store
            .prune(10_000 + machine.run_retention(), &machine)
            .expect("prune");
        assert_eq!(
            pruned,
            Pruned {
                request_ids: 3,
                runs: 3
            }
        );
        assert_eq!(cold(&store), (0, 0));
        assert_eq!(store.size_bytes(), Some(file().len() as u64));
        assert_eq!(store.load().expect("load"), state.without_cold());
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
        check_contract(&store, &state);
    }
}
