//! Unit tests of the store contract together with the machine: keeping the
//! cold entries in the store alone changes nothing.

use super::{MemoryStore, RedbStore, Store};
use crate::clock::Millis;
use crate::state::testing::*;
use crate::state::{Applied, Changes, Input, Machine, State, Wanted};
use proptest::prelude::*;

/// Drives the machine as the writer does: between inputs only the hot
/// entries are in memory; an input's cold entries are fetched from the store
/// before it is applied and dropped once committed, and ticks prune the store.
struct ColdHarness<S> {
    machine: Machine,
    state: State,
    store: S,
}

impl<S: Store> ColdHarness<S> {
    fn apply(&mut self, input: Input) -> Option<Applied> {
        let mut wanted = Wanted::default();
        wanted.add(&input);
        let tick = match input {
            Input::Tick { now } => Some(now),
            _ => None,
        };
        self.store.fetch(&mut self.state, &wanted).expect("fetch");
        let mut changes = Changes::default();
        let applied = self.machine.apply(&mut self.state, input, &mut changes);
        self.store.commit(&self.state, &changes).expect("commit");
        self.state.evict_cold(wanted.runs_in(&changes));
        if let Some(now) = tick {
            self.store.prune(now, &self.machine).expect("prune");
        }
        applied
    }

    /// Applies step `i` of a stream at `at` the writer's way here and the
    /// all-in-memory way to `full`, and checks that both answer alike and
    /// keep the same hot entries.
    fn step(
        &mut self,
        full: &mut State,
        i: usize,
        step: &Option<Step>,
        at: Millis,
    ) -> Result<(), TestCaseError> {
        let input = match step {
            Some(s) => input_of(s, i, at),
            None => Input::Tick { now: at },
        };
        let expected = self
            .machine
            .apply(full, input.clone(), &mut Changes::default());
        prop_assert_eq!(self.apply(input), expected, "step {}", i);
        prop_assert_eq!(&self.state, &full.without_cold(), "step {}", i);
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Keeping request ids and ended runs in the store alone changes no
    /// answer and no hot entry: at every step the writer's way and the
    /// all-in-memory way agree exactly.
    #[test]
    fn cold_entries_in_the_store_alone_change_nothing(stream in prop::collection::vec(timed_step(), 0..80)) {
        let machine = short_machine();
        // The all-in-memory way: every entry stays in the state.
        let mut full = State::default();
        let mut cold = ColdHarness {
            machine,
            state: State::default(),
            store: MemoryStore::default(),
        };
        let mut at = 0;
        for (i, (step, gap)) in stream.iter().enumerate() {
            at += gap;
            cold.step(&mut full, i, step, at)?;
            prop_assert_eq!(&cold.store.committed, &full, "step {}", i);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    /// The same with the embedded store, closed and opened again every few
    /// steps as a restart does: it answers every fetch as the all-in-memory
    /// way would, and reads back all it was given.
    #[test]
    fn the_embedded_store_changes_nothing_across_reopens(
        stream in prop::collection::vec(timed_step(), 0..80),
        reopen_every in 1usize..24,
    ) {
        let machine = short_machine();
        let dir = tempfile::tempdir().expect("tempdir");
        let open = || RedbStore::open(dir.path()).expect("open");
        let mut full = State::default();
        let mut cold = ColdHarness {
            machine,
            state: State::default(),
            store: open(),
        };
        let mut at = 0;
        for (i, (step, gap)) in stream.iter().enumerate() {
            at += gap;
            cold.step(&mut full, i, step, at)?;
            prop_assert_eq!(&cold.store.load_all().expect("load_all"), &full, "step {}", i);
            if i % reopen_every == reopen_every - 1 {
                // Closed before it is opened again: redb locks its file.
                let ColdHarness { machine, state, store } = cold;
                drop(store);
                cold = ColdHarness { machine, state, store: open() };
                prop_assert_eq!(&cold.store.load().expect("load"), &full.without_cold(), "step {}", i);
            }
        }
    }
}
