//! Grafana Cloud k6 (k6 Cloud) notifications: the format today's users send.
//!
//! The body is a user-written template rendered to JSON; the parser reads the
//! fields of k6 Cloud's "Generic Template" (`test.*`, `event.*`, `user.*`),
//! names every missing or mistyped required one by its dotted path
//! (`test.project_id`), and ignores the rest. Headers: `X-k6cloud-ID` (unique
//! per request), `X-k6cloud-Event` (the event, short as `test.started` or
//! full as `test.finished.aborted_user`), `User-Agent: K6CloudWebHook`. A
//! delivery is taken for this format by any of those headers, or, where a
//! proxy stripped them, by its shape (see [`is_k6cloud`]).

use super::{
    converted, header, is_web_link, Delivery, Event, Fields, Format, Headers, Kind, Project,
    RunError, RunEvent, RunEventKind, Trigger, WebhookError, ID, INTEGER, LINK, STRING, TEXT,
};
use crate::clock::Millis;
use crate::outcome::Outcome;

/// Prefix of the dedup key made from the body's `event.id`, so that it never
/// meets a request id by chance.
pub const EVENT_ID_PREFIX: &str = "k6cloud-event:";

/// The event identifiers, in the order the 422 lists them.
const EXPECTED: &str = "test.started[.manual|.scheduled|.all] or \
    test.finished[.finished|.success|.failed|.timed_out|.aborted_user|.aborted_system|\
    .aborted_script_error|.aborted_threshold|.aborted_limit|.all]";

/// True when the delivery is in this format: by its headers (k6 Cloud's, or
/// Load Impact's), else by its shape: an `event` object is k6 Cloud's (Load
/// Impact's `event` is a string), and with no `event`, a `test` object is.
/// A Load Impact body may carry any extra field, `test` too.
pub(super) fn is_k6cloud(headers: &Headers<'_>, fields: &Fields<'_>) -> bool {
    if header(headers.k6_event).is_some()
        || header(headers.k6_id).is_some()
        || headers
            .user_agent
            .is_some_and(|ua| ua.trim_start().starts_with("K6CloudWebHook"))
    {
        return true;
    }
    if header(headers.event).is_some() || header(headers.request_id).is_some() {
        return false;
    }
    let is_object = |field| {
        fields
            .raw(field)
            .is_some_and(|raw| raw.get().starts_with('{'))
    };
    match fields.raw("event") {
        Some(raw) if raw.get() != "null" => is_object("event"),
        _ => is_object("test"),
    }
}

/// `test.was_scheduled`: 1 or 0, or true or false, as templates render it.
const SCHEDULED: Kind<bool> = Kind {
    expected: "1, 0, true or false",
    read: |raw| {
        converted(raw, |v| {
            v.as_bool()
                .or_else(|| v.as_u64().filter(|n| *n <= 1).map(|n| n == 1))
        })
    },
};

/// How a start event identifier says the run was started, if it says.
fn event_trigger(name: &str) -> Option<Trigger> {
    match name {
        "test.started.scheduled" => Some(Trigger::Scheduled),
        "test.started.manual" => Some(Trigger::Manual),
        _ => None,
    }
}

/// What an event identifier says: start or finish, and the outcome a
/// specific finish names.
fn event_kind(name: &str) -> Option<(RunEventKind, Option<Outcome>)> {
    use Outcome::*;
    use RunEventKind::{Finished as Finish, Started as Start};
    Some(match name {
        "test.started" | "test.started.manual" | "test.started.scheduled" | "test.started.all" => {
            (Start, None)
        }
        // The header may name the event only as `test.started` or `test.ended`.
        "test.finished" | "test.finished.all" | "test.ended" => (Finish, None),
        "test.finished.finished" | "test.finished.success" => (Finish, Some(Finished)),
        "test.finished.failed" => (Finish, Some(FailedThreshold)),
        "test.finished.timed_out" => (Finish, Some(TimedOut)),
        "test.finished.aborted_user" => (Finish, Some(AbortedByUser)),
        "test.finished.aborted_system" => (Finish, Some(AbortedBySystem)),
        "test.finished.aborted_script_error" => (Finish, Some(AbortedByScriptError)),
        "test.finished.aborted_threshold" => (Finish, Some(AbortedByThreshold)),
        "test.finished.aborted_limit" => (Finish, Some(AbortedByLimit)),
        _ => return None,
    })
}

/// The event a notification names, in `X-k6cloud-Event`, in `event.type`, or
/// in both. The header may be coarser (`test.ended` where the body says
/// `test.finished.aborted_user`): the two must agree on start or finish, and
/// the body's identifier, the one that fired, says the rest.
fn event_named(
    header: Option<&str>,
    body: Option<String>,
) -> Result<(RunEventKind, Option<Outcome>, String), WebhookError> {
    // From the header (no field to blame) or from `event.type`.
    let known = |name: &str, in_body: bool| {
        event_kind(name).ok_or_else(|| WebhookError::UnknownEvent {
            event: name.to_owned(),
            from: if in_body {
                "field `event.type`"
            } else {
                "header X-k6cloud-Event"
            },
            field: in_body.then_some("event.type"),
            expected: EXPECTED,
        })
    };
    match (header, body) {
        (None, None) => Err(WebhookError::MissingField("event.type")),
        (Some(name), None) => known(name, false).map(|(k, o)| (k, o, name.to_owned())),
        (header, Some(name)) => {
            let (kind, outcome) = known(&name, true)?;
            match header.map(|h| (h, known(h, false))) {
                Some((h, Ok((header_kind, _)))) if header_kind != kind => {
                    Err(WebhookError::EventMismatch {
                        name: "X-k6cloud-Event",
                        header: h.to_owned(),
                        field: "event.type",
                        body: name,
                    })
                }
                Some((_, Err(e))) => Err(e),
                _ => Ok((kind, outcome, name)),
            }
        }
    }
}

/// The `errors` list: objects with an integer `code` and, optionally, a
/// `detail` and a `created` time; named `errors.code` and so on when wrong.
fn errors(fields: &Fields<'_>) -> Result<Vec<RunError>, WebhookError> {
    let Some(raw) = fields.raw("errors").filter(|raw| raw.get() != "null") else {
        return Ok(Vec::new());
    };
    let wrong = WebhookError::WrongType {
        field: "errors",
        expected: "a list of objects",
    };
    let items: Vec<&serde_json::value::RawValue> =
        serde_json::from_str(raw.get()).map_err(|_| wrong.clone())?;
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        if !item.get().starts_with('{') {
            return Err(wrong);
        }
        let error = Fields::of(item, "errors.").map_err(|_| wrong.clone())?;
        out.push(RunError {
            code: error.required("errors.code", &INTEGER)?,
            detail: error.optional("errors.detail", &TEXT)?,
            created: time(&error, "errors.created"),
        });
    }
    Ok(out)
}

/// A time as k6 Cloud writes it (ISO 8601 in GMT: `T` or a space, an
/// optional fraction, then `Z` or nothing), or with an explicit offset
/// (`+02:00`, `-0500`), in milliseconds since the epoch; `None` for anything
/// else, so that an unreadable time falls back to the time of receipt.
fn time(fields: &Fields<'_>, field: &'static str) -> Option<Millis> {
    let text = fields.optional(field, &STRING).ok().flatten()?;
    let (local, offset) = split_offset(text.trim())?;
    // The local part alone: humantime would read a `+hh:mm` after a fraction
    // as GMT whatever its hours.
    let local = humantime::parse_rfc3339_weak(local).ok()?;
    let utc = if offset >= 0 {
        local.checked_sub(std::time::Duration::from_secs(offset.unsigned_abs()))?
    } else {
        local.checked_add(std::time::Duration::from_secs(offset.unsigned_abs()))?
    };
    let since = utc.duration_since(std::time::UNIX_EPOCH).ok()?;
    Some(crate::clock::millis(since))
}

/// Splits an ISO 8601 time into its local part and its offset east of GMT
/// in seconds: `Z` or none is 0, `±hh:mm` and `±hhmm` are read; `None` for
/// an offset out of range.
fn split_offset(text: &str) -> Option<(&str, i64)> {
    if let Some(local) = text.strip_suffix(['Z', 'z']) {
        return Some((local, 0));
    }
    let two_digits = |part: Option<&str>| -> Option<i64> {
        let part = part?;
        (part.len() == 2 && part.bytes().all(|b| b.is_ascii_digit()))
            .then(|| part.parse().ok())
            .flatten()
    };
    // `±hh:mm` or `±hhmm` at the end. A date's own `-` is never in that
    // place: the time part ends in `:ss` or a fraction.
    for (len, colon) in [(6, true), (5, false)] {
        let Some(start) = text.len().checked_sub(len) else {
            continue;
        };
        let (Some(local), Some(offset)) = (text.get(..start), text.get(start..)) else {
            continue;
        };
        let sign = match offset.as_bytes().first() {
            Some(b'+') => 1,
            Some(b'-') => -1,
            _ => continue,
        };
        let minutes_at = if colon {
            if offset.get(3..4) != Some(":") {
                continue;
            }
            4
        } else {
            3
        };
        let hours = two_digits(offset.get(1..3))?;
        let minutes = two_digits(offset.get(minutes_at..minutes_at + 2))?;
        if hours > 23 || minutes > 59 {
            return None;
        }
        return Some((local, sign * (hours * 3600 + minutes * 60)));
    }
    Some((text, 0))
}

/// Parses a k6 Cloud notification.
pub(super) fn parse(headers: &Headers<'_>, fields: &Fields<'_>) -> Result<Delivery, WebhookError> {
    let event = fields.object("event", "event.")?;
    let body_event = match &event {
        Some(event) => event.optional("event.type", &STRING)?,
        None => None,
    };
    // `<any>` is what k6 Cloud renders when no event was chosen.
    let body_event = body_event.filter(|name| name.trim() != "<any>");
    let (kind, event_outcome, name) = event_named(header(headers.k6_event), body_event)?;
    let test = fields
        .object("test", "test.")?
        .ok_or(WebhookError::MissingField("test"))?;
    let user = fields.object("user", "user.")?;
    let user_id = match &user {
        Some(user) => user.optional("user.id", &ID)?,
        None => None,
    };
    let result = test.optional("test.result", &INTEGER)?;
    let scheduled = test.optional("test.was_scheduled", &SCHEDULED)?;
    let trigger = event_trigger(name.as_str())
        .or(scheduled.map(|s| {
            if s {
                Trigger::Scheduled
            } else {
                Trigger::Manual
            }
        }))
        .unwrap_or(Trigger::Unknown);
    let run = RunEvent {
        kind,
        load_test_run_id: test.required("test.id", &ID)?,
        load_test_id: test.required("test.load_test_id", &ID)?,
        project: Project {
            organization_id: test.required("test.organization_id", &ID)?,
            project_id: test.required("test.project_id", &ID)?,
        },
        user_id,
        name: test.optional("test.name", &TEXT)?,
        status: test.required("test.status", &INTEGER)?,
        status_text: test.optional("test.status_text", &TEXT)?,
        format: Format::K6Cloud,
        event_outcome,
        result_failed: result == Some(1),
        reported_start: time(&test, "test.started"),
        reported_end: time(&test, "test.ended"),
        url: test.optional("test.url", &LINK)?.filter(|l| is_web_link(l)),
        load_test_url: test
            .optional("test.load_test_url", &LINK)?
            .filter(|l| is_web_link(l)),
        trigger,
        errors: errors(fields)?,
    };
    let event_id = match &event {
        Some(event) => event.optional("event.id", &STRING)?,
        None => None,
    };
    let request_ids = header(headers.k6_id)
        .map(str::to_owned)
        .into_iter()
        .chain(
            event_id
                .filter(|id| !id.trim().is_empty())
                .map(|id| format!("{EVENT_ID_PREFIX}{}", id.trim())),
        )
        .collect();
    Ok(Delivery {
        request_ids,
        event: Event::Run(run),
    })
}

#[cfg(test)]
mod tests {
    use super::super::parse as parse_any;
    use super::*;
    use serde_json::{json, Value};

    /// The Generic Template's body, rendered for a finished run.
    fn body() -> Value {
        json!({
            "event": {"id": "ev-1", "type": "test.finished.finished", "text": "Test finished"},
            "test": {
                "organization_id": 1, "project_id": 42, "id": 5001, "url": "https://x/runs/5001",
                "load_test_id": 700, "load_test_url": "https://x/tests/700",
                "name": "checkout \"flow\" é", "was_scheduled": 0,
                "started": "2024-05-06T10:00:00Z", "ended": "2024-05-06T10:01:30Z",
                "status": 3, "status_text": "Finished", "result": 0, "result_text": "Passed"
            },
            "user": {"id": 9, "name": "someone"},
            "errors": []
        })
    }

    fn parse(headers: Headers<'_>, value: &Value) -> Result<Delivery, WebhookError> {
        parse_any(headers, value.to_string().as_bytes())
    }

    fn run_of(delivery: Delivery) -> RunEvent {
        match delivery.event {
            Event::Run(run) => run,
            other => panic!("not a run: {other:?}"),
        }
    }

    #[test]
    fn the_generic_template_is_read_by_its_shape_alone() {
        let d = parse(Headers::default(), &body()).expect("valid");
        assert_eq!(d.request_ids, vec!["k6cloud-event:ev-1".to_owned()]);
        let run = run_of(d);
        assert_eq!(run.format, Format::K6Cloud);
        assert_eq!(run.kind, RunEventKind::Finished);
        assert_eq!(run.event_outcome, Some(Outcome::Finished));
        assert_eq!(run.load_test_run_id, 5001);
        assert_eq!(run.load_test_id, 700);
        assert_eq!(run.project.project_id, 42);
        assert_eq!(run.user_id, Some(9));
        assert_eq!(run.name.as_deref(), Some("checkout \"flow\" é"));
        assert_eq!(run.reported_start, Some(1_714_989_600_000));
        assert_eq!(run.reported_end, Some(1_714_989_690_000));
        assert_eq!(run.url.as_deref(), Some("https://x/runs/5001"));
        assert_eq!(run.load_test_url.as_deref(), Some("https://x/tests/700"));
        assert!(!run.result_failed);
    }

    #[test]
    fn headers_name_the_format_and_the_event() {
        let mut b = body();
        b.as_object_mut().map(|o| o.remove("event"));
        let headers = Headers {
            k6_event: Some("test.started"),
            k6_id: Some("req-7"),
            ..Headers::default()
        };
        let d = parse(headers, &b).expect("valid");
        assert_eq!(d.request_ids, vec!["req-7".to_owned()]);
        assert_eq!(run_of(d).kind, RunEventKind::Started);
        // A start in the header and a finish in the body is refused.
        let headers = Headers {
            k6_event: Some("test.started"),
            ..Headers::default()
        };
        let err = parse(headers, &body()).expect_err("mismatch");
        assert_eq!((err.status(), err.field()), (400, Some("event.type")));
        // The header may be coarser than the body: the body's identifier wins.
        let headers = Headers {
            k6_event: Some("test.ended"),
            ..Headers::default()
        };
        let mut b = body();
        b["event"]["type"] = json!("test.finished.aborted_user");
        let run = run_of(parse(headers, &b).expect("test.ended with a specific body"));
        assert_eq!(
            (run.kind, run.event_outcome),
            (RunEventKind::Finished, Some(Outcome::AbortedByUser))
        );
        // `<any>` in the body: the header names the event.
        b["event"]["type"] = json!("<any>");
        let run = run_of(parse(headers, &b).expect("<any> with a header"));
        assert_eq!(
            (run.kind, run.event_outcome),
            (RunEventKind::Finished, None)
        );
        let err = parse(Headers::default(), &b).expect_err("<any> and no header");
        assert_eq!(err.field(), Some("event.type"));
    }

    #[test]
    fn every_event_identifier_is_known() {
        for (name, kind, outcome) in [
            ("test.started.manual", RunEventKind::Started, None),
            ("test.started.scheduled", RunEventKind::Started, None),
            ("test.started.all", RunEventKind::Started, None),
            ("test.finished.all", RunEventKind::Finished, None),
            (
                "test.finished.success",
                RunEventKind::Finished,
                Some(Outcome::Finished),
            ),
            (
                "test.finished.failed",
                RunEventKind::Finished,
                Some(Outcome::FailedThreshold),
            ),
            (
                "test.finished.timed_out",
                RunEventKind::Finished,
                Some(Outcome::TimedOut),
            ),
            (
                "test.finished.aborted_user",
                RunEventKind::Finished,
                Some(Outcome::AbortedByUser),
            ),
            (
                "test.finished.aborted_system",
                RunEventKind::Finished,
                Some(Outcome::AbortedBySystem),
            ),
            (
                "test.finished.aborted_script_error",
                RunEventKind::Finished,
                Some(Outcome::AbortedByScriptError),
            ),
            (
                "test.finished.aborted_threshold",
                RunEventKind::Finished,
                Some(Outcome::AbortedByThreshold),
            ),
            (
                "test.finished.aborted_limit",
                RunEventKind::Finished,
                Some(Outcome::AbortedByLimit),
            ),
        ] {
            let mut b = body();
            b["event"]["type"] = json!(name);
            let run = run_of(parse(Headers::default(), &b).expect(name));
            assert_eq!((run.kind, run.event_outcome), (kind, outcome), "{name}");
        }
        let mut b = body();
        b["event"]["type"] = json!("test.exploded");
        let err = parse(Headers::default(), &b).expect_err("unknown");
        assert_eq!((err.status(), err.field()), (422, Some("event.type")));
        // Named by the header alone: no field of the body is to blame.
        let mut b = body();
        b.as_object_mut().map(|o| o.remove("event"));
        let headers = Headers {
            k6_event: Some("test.bogus"),
            ..Headers::default()
        };
        let err = parse(headers, &b).expect_err("unknown header event");
        assert_eq!((err.status(), err.field()), (422, None));
        assert!(err.to_string().contains("header X-k6cloud-Event"), "{err}");
    }

    #[test]
    fn required_fields_are_named_by_their_dotted_path() {
        for field in [
            "id",
            "load_test_id",
            "organization_id",
            "project_id",
            "status",
        ] {
            let mut b = body();
            b["test"].as_object_mut().map(|o| o.remove(field));
            let err = parse(Headers::default(), &b).expect_err(field);
            assert_eq!(err.status(), 400, "{field}");
            let dotted = format!("test.{field}");
            assert_eq!(err.field(), Some(dotted.as_str()), "{err}");
            b["test"][field] = json!("12");
            let err = parse(Headers::default(), &b).expect_err(field);
            assert_eq!(err.field(), Some(dotted.as_str()), "{err}");
        }
        // (An `event` string would be Load Impact's shape: the User-Agent
        // says which format it is.)
        let k6 = Headers {
            user_agent: Some("K6CloudWebHook"),
            ..Headers::default()
        };
        for (path, value) in [
            ("test", json!(7)),
            ("event", json!("test.started")),
            ("user", json!([1])),
        ] {
            let mut b = body();
            b[path] = value;
            let err = parse(k6, &b).expect_err(path);
            assert_eq!((err.status(), err.field()), (400, Some(path)), "{err}");
        }
        let mut b = body();
        b["user"]["id"] = json!("nine");
        let err = parse(Headers::default(), &b).expect_err("user.id");
        assert_eq!(err.field(), Some("user.id"));
        let mut b = body();
        b["test"]["name"] = json!(3);
        let err = parse(Headers::default(), &b).expect_err("test.name");
        assert_eq!(err.field(), Some("test.name"));
    }

    #[test]
    fn unreadable_times_fall_back_and_extra_fields_are_ignored() {
        let mut b = body();
        b["test"]["started"] = json!("yesterday");
        b["test"]["ended"] = Value::Null;
        b["test"]["something_new"] = json!({"deep": [0]});
        let text = b
            .to_string()
            .replace(r#"{"deep":[0]}"#, r#"{"deep":[1e400]}"#);
        assert!(text.contains("1e400"));
        let run = run_of(parse_any(Headers::default(), text.as_bytes()).expect("valid"));
        assert_eq!((run.reported_start, run.reported_end), (None, None));
        // A space instead of T and a fraction are read too.
        let mut b = body();
        b["test"]["started"] = json!("2024-05-06 10:00:00.250");
        let run = run_of(parse(Headers::default(), &b).expect("valid"));
        assert_eq!(run.reported_start, Some(1_714_989_600_250));
    }

    #[test]
    fn an_offset_from_gmt_is_applied_with_or_without_a_fraction() {
        let started = |text: &str| {
            let mut b = body();
            b["test"]["started"] = json!(text);
            run_of(parse(Headers::default(), &b).expect("valid")).reported_start
        };
        // 2024-05-06T10:00:00Z, written in several ways.
        let ten = Some(1_714_989_600_000);
        for text in [
            "2024-05-06T10:00:00Z",
            "2024-05-06T10:00:00z",
            "2024-05-06T10:00:00",
            "2024-05-06T10:00:00+00:00",
            "2024-05-06T10:00:00-00:00",
            "2024-05-06T12:00:00+02:00",
            "2024-05-06T12:00:00.000+02:00",
            "2024-05-06T12:00:00+0200",
            "2024-05-06 05:00:00.000-05:00",
            "2024-05-06T05:30:00-0430",
            "2024-05-05T23:00:00.000-11:00",
        ] {
            assert_eq!(started(text), ten, "{text}");
        }
        assert_eq!(
            started("2024-05-06T12:00:00.250+02:00"),
            Some(1_714_989_600_250)
        );
        // Offsets that are no offsets: the time is unreadable, not misread.
        for text in [
            "2024-05-06T10:00:00+24:00",
            "2024-05-06T10:00:00+02:60",
            "2024-05-06T10:00:00+2:00",
            "2024-05-06T10:00:00+02-00",
            "2024-05-06T10:00:00.000+0x:00",
            "+02:00",
            "",
        ] {
            assert_eq!(started(text), None, "{text}");
        }
    }

    #[test]
    fn a_load_impact_body_with_an_extra_test_field_stays_load_impact() {
        let legacy = json!({
            "event": "test.started", "status": 2, "organization_id": 1, "project_id": 2,
            "load_test_id": 3, "load_test_run_id": 4, "test": {"id": 1}
        });
        let run = run_of(parse(Headers::default(), &legacy).expect("valid"));
        assert_eq!((run.format, run.load_test_run_id), (Format::LoadImpact, 4));
        // Load Impact's headers decide it too.
        let headers = Headers {
            request_id: Some("li-1"),
            ..Headers::default()
        };
        let err = parse(headers, &body()).expect_err("not Load Impact's body");
        assert_eq!(err.field(), Some("event"));
    }

    #[test]
    fn the_trigger_comes_from_the_event_else_was_scheduled() {
        let trigger = |event: &str, scheduled: Value| {
            let mut b = body();
            b["event"]["type"] = json!(event);
            b["test"]["was_scheduled"] = scheduled;
            parse(Headers::default(), &b).map(|d| run_of(d).trigger)
        };
        assert_eq!(
            trigger("test.started.scheduled", json!(0)),
            Ok(Trigger::Scheduled)
        );
        assert_eq!(
            trigger("test.started.manual", json!(true)),
            Ok(Trigger::Manual)
        );
        assert_eq!(trigger("test.started", json!(1)), Ok(Trigger::Scheduled));
        assert_eq!(
            trigger("test.started.all", json!(false)),
            Ok(Trigger::Manual)
        );
        assert_eq!(trigger("test.started", Value::Null), Ok(Trigger::Unknown));
        let err = trigger("test.started", json!(2)).expect_err("2 is no boolean");
        assert_eq!(err.field(), Some("test.was_scheduled"));
    }

    #[test]
    fn errors_are_read_and_named_when_wrong() {
        let mut b = body();
        b["errors"] = json!([
            {"code": 1001, "created": "2024-05-06T10:00:05Z", "detail": "a \"quoted\" detail"},
            {"code": 7}
        ]);
        let run = run_of(parse(Headers::default(), &b).expect("valid"));
        assert_eq!(run.errors.len(), 2);
        assert_eq!(run.errors[0].code, 1001);
        assert_eq!(run.errors[0].created, Some(1_714_989_605_000));
        assert_eq!(run.errors[0].detail.as_deref(), Some("a \"quoted\" detail"));
        assert_eq!(
            (run.errors[1].code, run.errors[1].detail.as_deref()),
            (7, None)
        );
        for (bad, field) in [
            (json!({"code": 1}), "errors"),
            (json!([1, 2]), "errors"),
            (json!([{"detail": "no code"}]), "errors.code"),
            (json!([{"code": "1"}]), "errors.code"),
            (json!([{"code": 1, "detail": 5}]), "errors.detail"),
        ] {
            b["errors"] = bad.clone();
            let err = parse(Headers::default(), &b).expect_err("bad errors");
            assert_eq!((err.status(), err.field()), (400, Some(field)), "{bad}");
        }
    }

    #[test]
    fn a_failed_result_is_kept() {
        let mut b = body();
        b["test"]["result"] = json!(1);
        assert!(run_of(parse(Headers::default(), &b).expect("valid")).result_failed);
    }
}
