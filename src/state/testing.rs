//! Builders shared by the unit tests of the state and of the store: events,
//! random streams of deliveries, a machine with short retentions.

use super::*;
use crate::webhook::{RunEvent, RunEventKind};
use proptest::prelude::*;

pub(crate) const P1: Project = Project {
    organization_id: 1,
    project_id: 10,
};
pub(crate) const P2: Project = Project {
    organization_id: 1,
    project_id: 20,
};

pub(crate) fn run_event(
    kind: RunEventKind,
    run: u64,
    project: Project,
    status: i64,
    text: &str,
) -> Event {
    Event::Run(RunEvent {
        kind,
        load_test_run_id: run,
        load_test_id: run % 3,
        project,
        user_id: Some(5),
        name: Some(format!("test {}", run % 3)),
        status,
        status_text: (!text.is_empty()).then(|| text.to_owned()),
        ..RunEvent::default()
    })
}

pub(crate) fn start(run: u64, project: Project) -> Event {
    run_event(RunEventKind::Started, run, project, 2, "Running")
}

pub(crate) fn finish(run: u64, project: Project, status: i64, text: &str) -> Event {
    run_event(RunEventKind::Finished, run, project, status, text)
}

/// One delivery in a random stream: which run, which event, a retry or not.
#[derive(Debug, Clone)]
pub(crate) struct Step {
    pub(crate) run: u64,
    pub(crate) finish: bool,
    /// 0: Load Impact's own id for this (run, event); 1: a fresh id (a
    /// re-send); 2: no id at all.
    pub(crate) id_kind: u8,
}

pub(crate) fn step() -> impl Strategy<Value = Step> {
    (0u64..12, any::<bool>(), 0u8..3).prop_map(|(run, finish, id_kind)| Step {
        run,
        finish,
        id_kind,
    })
}

pub(crate) fn project_of(run: u64) -> Project {
    if run % 2 == 0 {
        P1
    } else {
        P2
    }
}

/// Each run's fixed final status (status, text), so that every delivery of a
/// run's finish carries the same body, as Load Impact's retries do.
pub(crate) fn status_of(run: u64) -> (i64, &'static str) {
    [
        (3, "Finished"),
        (6, "Aborted by user"),
        (12, "Failed threshold"),
        (8, ""),
        (99, "Something new"),
    ][(run % 5) as usize]
}

pub(crate) fn event_of(step: &Step) -> Event {
    if step.finish {
        let (status, text) = status_of(step.run);
        finish(step.run, project_of(step.run), status, text)
    } else {
        start(step.run, project_of(step.run))
    }
}

/// Short retentions, so that random streams cross every one of them.
pub(crate) fn short_machine() -> Machine {
    Machine {
        dedup_ttl: 5_000,
        run_max_duration: 20_000,
        abort_window: 3_000,
        series_ttl: 50_000,
        runs_info_limit: 3,
        spans_max_pending: Some(4),
        ..Machine::default()
    }
}

/// One step of a stream: a delivery or a tick, after some milliseconds.
pub(crate) fn timed_step() -> impl Strategy<Value = (Option<Step>, i64)> {
    (
        prop_oneof![4 => step().prop_map(Some), 1 => Just(None)],
        prop_oneof![0i64..2_000, 0i64..30_000],
    )
}

/// The input of a stream's step `i` at `at`: its request id follows the
/// step's `id_kind`.
pub(crate) fn input_of(step: &Step, i: usize, at: Millis) -> Input {
    let request_id = match step.id_kind {
        0 => Some(format!("{}-{}", step.run, step.finish)),
        1 => Some(format!("resend-{i}")),
        _ => None,
    };
    Input::Webhook {
        request_ids: request_id.into_iter().collect(),
        event: event_of(step),
        at,
    }
}
