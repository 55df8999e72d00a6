//! `GET /api/v1/runs`: the runs running now and the recently ended ones, as
//! JSON, read from the committed state.

use super::{json_response, App, Body};
use crate::clock::Millis;
use crate::state::Run;
use hyper::{Response, StatusCode};
use serde_json::json;

fn timestamp(at: Option<Millis>) -> serde_json::Value {
    at.map_or(serde_json::Value::Null, |ms| json!(ms as f64 / 1000.0))
}

fn run_json(id: u64, run: &Run) -> serde_json::Value {
    json!({
        "load_test_run_id": id,
        "load_test_id": run.load_test_id,
        "organization_id": run.project.organization_id,
        "project_id": run.project.project_id,
        "user_id": run.user_id,
        "name": run.name,
        "started_at": timestamp(run.started_at),
        "finished_at": timestamp(run.finished_at),
        "expired_at": timestamp(run.expired_at),
        "status": run.status,
        "status_text": run.status_text,
        "outcome": run.outcome.map(|o| o.as_str()),
        "duration_seconds": run.duration_millis().map(crate::state::seconds),
    })
}

/// `GET /api/v1/runs`: runs now running, and the recently ended ones (the
/// same runs as `loadimpact_test_run_info`), newest first.
pub(super) fn runs(app: &App) -> Response<Body> {
    let state = app.shared.read();
    let mut running: Vec<_> = state.runs.iter().filter(|(_, r)| r.is_running()).collect();
    running.sort_by_key(|(id, r)| (std::cmp::Reverse(r.started_at), **id));
    let recent = state.recent_runs();
    json_response(
        StatusCode::OK,
        json!({
            "running": running.iter().map(|(id, r)| run_json(**id, r)).collect::<Vec<_>>(),
            "recent": recent.iter().map(|(id, r, _, _)| run_json(*id, r)).collect::<Vec<_>>(),
        }),
    )
}
