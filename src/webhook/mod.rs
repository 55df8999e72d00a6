//! Parsing and validation of one webhook delivery, in either format: Load
//! Impact's fixed bodies (here) or Grafana Cloud k6's templates
//! ([`k6cloud`]), told apart by their headers or, when a proxy stripped
//! those, by the body's shape.
//!
//! Turns the headers and body of a `POST` into a typed [`Delivery`], or into a
//! [`WebhookError`] that says which HTTP status to answer and why. Pure: no I/O,
//! no clock, no state, so every rejection is decided here and nothing else in
//! the exporter ever sees a malformed event.

mod k6cloud;

use crate::clock::Millis;
use crate::outcome::Outcome;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;
use std::borrow::Cow;

/// The three event names Load Impact sends.
pub const EVENT_STARTED: &str = "test.started";
pub const EVENT_FINISHED: &str = "test.finished";
pub const EVENT_NOTIFICATION_CHANNEL: &str = "test.notification_channel";

/// The organization and project a run belongs to: the labels of every
/// per-project series.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct Project {
    pub organization_id: u64,
    pub project_id: u64,
}

/// What a delivery says happened.
// One per delivery, moved a few times on its way to the writer: boxing the
// run would cost an allocation per delivery for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Event {
    /// `test.started` or `test.finished` for one run.
    Run(RunEvent),
    /// `test.notification_channel`: the "Test Hook" button; carries no run.
    NotificationChannel,
}

impl Event {
    /// The event's name, as Load Impact spells it.
    pub fn name(&self) -> &'static str {
        match self {
            Event::Run(run) => run.kind.name(),
            Event::NotificationChannel => EVENT_NOTIFICATION_CHANNEL,
        }
    }
}

/// Whether a run event opens or closes the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum RunEventKind {
    #[default]
    Started,
    Finished,
}

impl RunEventKind {
    pub fn name(self) -> &'static str {
        match self {
            RunEventKind::Started => EVENT_STARTED,
            RunEventKind::Finished => EVENT_FINISHED,
        }
    }
}

/// How a run was started: the `trigger` label of the started runs. Only
/// Grafana Cloud k6 says (by its event identifier or `test.was_scheduled`);
/// Load Impact's runs are `Unknown`.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    Scheduled,
    Manual,
    #[default]
    Unknown,
}

impl Trigger {
    /// Every trigger, in the order they are exported.
    pub const ALL: [Trigger; 3] = [Trigger::Scheduled, Trigger::Manual, Trigger::Unknown];

    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Scheduled => "scheduled",
            Trigger::Manual => "manual",
            Trigger::Unknown => "unknown",
        }
    }
}

/// One of the errors k6 Cloud attached to a run (`errors[]`): an internal
/// code, a short description, and when it happened.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RunError {
    pub code: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<Millis>,
}

/// Which service's format a delivery came in: it decides how the status
/// reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum Format {
    /// Load Impact's fixed bodies: the status table is `--status-table`'s.
    #[default]
    LoadImpact,
    /// Grafana Cloud k6's notification templates: always the k6 table, and
    /// the event identifier and `test.result` say more.
    K6Cloud,
}

/// The body of a `test.started` or `test.finished` event.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct RunEvent {
    pub kind: RunEventKind,
    pub load_test_run_id: u64,
    pub load_test_id: u64,
    pub project: Project,
    pub user_id: Option<u64>,
    pub name: Option<String>,
    pub status: i64,
    pub status_text: Option<String>,
    pub format: Format,
    /// The outcome a specific k6 Cloud event identifier names
    /// (`test.finished.aborted_user`).
    pub event_outcome: Option<Outcome>,
    /// k6 Cloud's `test.result` was 1: the run failed (a threshold).
    pub result_failed: bool,
    /// When the run started and ended, as the body says (k6 Cloud's
    /// `test.started` and `test.ended`); `None` where it does not say, or
    /// says something unreadable.
    pub reported_start: Option<Millis>,
    pub reported_end: Option<Millis>,
    /// k6 Cloud's links to the run and to its load test (`test.url`,
    /// `test.load_test_url`).
    pub url: Option<String>,
    pub load_test_url: Option<String>,
    /// How the run was started.
    pub trigger: Trigger,
    /// The errors k6 Cloud attached to the run.
    pub errors: Vec<RunError>,
}

/// One parsed delivery: the event and the ids that identify it (Load
/// Impact's `X-LoadImpact-ID`; k6 Cloud's `X-k6cloud-ID` and `event.id`).
/// A delivery any of whose ids was seen before is a duplicate.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub request_ids: Vec<String>,
    pub event: Event,
}

/// The request headers the parser looks at.
#[derive(Debug, Clone, Copy, Default)]
pub struct Headers<'a> {
    pub content_type: Option<&'a str>,
    /// `X-LoadImpact-Event`.
    pub event: Option<&'a str>,
    /// `X-LoadImpact-ID`.
    pub request_id: Option<&'a str>,
    /// `X-k6cloud-Event`.
    pub k6_event: Option<&'a str>,
    /// `X-k6cloud-ID`.
    pub k6_id: Option<&'a str>,
    pub user_agent: Option<&'a str>,
}

/// The event a delivery names: in the header `(name, value)`, in the body's
/// `(field, value)`, or in both if they agree.
fn event_name(
    (header_name, header_value): (&'static str, Option<&str>),
    (field, body): (&'static str, Option<String>),
) -> Result<String, WebhookError> {
    match (header(header_value), body) {
        (Some(header), Some(body)) if header != body => Err(WebhookError::EventMismatch {
            name: header_name,
            header: header.to_owned(),
            field,
            body,
        }),
        (_, Some(name)) => Ok(name),
        (Some(name), None) => Ok(name.to_owned()),
        (None, None) => Err(WebhookError::MissingField(field)),
    }
}

/// A header's value, trimmed; `None` when absent or blank.
fn header(value: Option<&str>) -> Option<&str> {
    value.map(str::trim).filter(|s| !s.is_empty())
}

/// Why a delivery was rejected; each maps to one HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("content type {0:?} is not JSON; send application/json")]
    UnsupportedContentType(String),
    #[error("body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("body must be a JSON object")]
    NotAnObject,
    #[error("field `{0}` is missing")]
    MissingField(&'static str),
    #[error("field `{field}` must be {expected}")]
    WrongType {
        field: &'static str,
        expected: &'static str,
    },
    /// The header `name` and the body's `field` name different events.
    #[error("header {name} is {header:?} but the body's event is {body:?}")]
    EventMismatch {
        name: &'static str,
        header: String,
        field: &'static str,
        body: String,
    },
    /// An event this exporter does not know, named in `from` (a header or a
    /// field); `field` when a field of the body is to blame.
    #[error("unknown event {event:?} in {from}; expected {expected}")]
    UnknownEvent {
        event: String,
        from: &'static str,
        field: Option<&'static str>,
        expected: &'static str,
    },
}

impl WebhookError {
    /// The HTTP status this rejection is answered with.
    pub fn status(&self) -> u16 {
        match self {
            WebhookError::UnsupportedContentType(_) => 415,
            WebhookError::UnknownEvent { .. } => 422,
            _ => 400,
        }
    }

    /// The offending field, when one field is to blame.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            WebhookError::MissingField(field) | WebhookError::WrongType { field, .. } => {
                Some(field)
            }
            WebhookError::EventMismatch { field, .. } => Some(field),
            WebhookError::UnknownEvent { field, .. } => *field,
            _ => None,
        }
    }
}

/// True for a content type whose media type is JSON (`application/json`,
/// `application/*+json`, `text/json`), with any parameters.
fn is_json_content_type(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || essence == "text/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// The body's top-level fields, each kept as its raw JSON text and parsed
/// only when read. A number that JSON can write but no field can hold (such
/// as `1e400`) is then blamed on its field rather than on the whole body, and
/// unknown extra fields are never parsed at all.
///
/// A nested object (k6 Cloud's `test`, `event`, `user`) is read the same
/// way, with its path as the prefix of the names its errors give
/// (`test.project_id`).
///
/// Names and raw values borrow from the body: a delivery has about ten
/// fields, so they are kept in order in a list, and a name given twice
/// reads as its last value, as a map would keep it.
struct Fields<'a> {
    members: Vec<(Cow<'a, str>, &'a RawValue)>,
    /// `""` at the top level, else the object's path and a dot (`"test."`).
    prefix: &'static str,
}

/// A JSON string borrowed from the body where it has no escape, else
/// unescaped into a copy of its own.
struct Text<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> Visitor<'de> for TextVisitor {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, text: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(text)))
            }
            fn visit_str<E>(self, text: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(text.to_owned())))
            }
        }
        deserializer.deserialize_str(TextVisitor)
    }
}

/// The members of one JSON object, in order, as [`Fields`] keeps them.
struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MembersVisitor;
        impl<'de> Visitor<'de> for MembersVisitor {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members<'de>, A::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(0).max(16));
                while let Some((Text(name), raw)) = map.next_entry::<Text<'de>, &'de RawValue>()? {
                    members.push((name, raw));
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(MembersVisitor)
    }
}

/// What a field must hold, for reading it and for naming it in an error.
struct Kind<T> {
    expected: &'static str,
    /// Reads a field's raw JSON: `Ok(None)` for `null`, `Err(())` for
    /// anything that is not of this kind (a number out of its range too).
    read: fn(&str) -> Result<Option<T>, ()>,
}

/// Reads raw JSON as `T` (or `null`), with serde's own checks of type and range.
fn typed<T: serde::de::DeserializeOwned>(raw: &str) -> Result<Option<T>, ()> {
    serde_json::from_str(raw).map_err(drop)
}

/// Reads raw JSON as a [`Value`] (or `null`), then `convert`s it.
fn converted<T>(raw: &str, convert: fn(&Value) -> Option<T>) -> Result<Option<T>, ()> {
    let value: Value = serde_json::from_str(raw).map_err(drop)?;
    if value.is_null() {
        return Ok(None);
    }
    convert(&value).map(Some).ok_or(())
}

/// Reads raw JSON as a string (or `null`) and cleans it for showing.
fn cleaned(raw: &str, max_chars: usize) -> Result<Option<String>, ()> {
    let text: Option<Text<'_>> = serde_json::from_str(raw).map_err(drop)?;
    Ok(text.map(|Text(text)| clean_text(&text, max_chars)))
}

const ID: Kind<u64> = Kind {
    expected: "a non-negative integer",
    read: typed::<u64>,
};
const INTEGER: Kind<i64> = Kind {
    expected: "an integer",
    read: typed::<i64>,
};
const STRING: Kind<String> = Kind {
    expected: "a string",
    read: typed::<String>,
};
/// A text that people read (a run's name, its status text, an error's
/// detail), as [`clean_text`] leaves it.
const TEXT: Kind<String> = Kind {
    expected: "a string",
    read: |raw| cleaned(raw, MAX_TEXT_CHARS),
};
/// A link to a page of the service, as [`clean_text`] leaves it.
const LINK: Kind<String> = Kind {
    expected: "a string",
    read: |raw| cleaned(raw, MAX_LINK_CHARS),
};

/// The most characters of a name, status text or error detail that are kept.
pub const MAX_TEXT_CHARS: usize = 200;
/// The most characters of a link that are kept.
pub const MAX_LINK_CHARS: usize = 2048;

/// Characters that change how text is shown without being seen: C0 and C1
/// controls (newlines and escape sequences included), zero-width and
/// bidirectional marks, line and paragraph separators, byte order marks.
fn is_hidden(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{200B}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFB}')
}

/// `text` as it may be shown in a label, a span, a page or a log line: each
/// run of hidden characters ([`is_hidden`]) becomes one space, the ends are
/// trimmed, and a text longer than `max_chars` is cut to `max_chars`
/// characters, the last of them `…`.
pub fn clean_text(text: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max_chars.saturating_mul(4)));
    let mut gap = false;
    for c in text.chars() {
        if is_hidden(c) {
            gap = true;
            continue;
        }
        if gap && !out.is_empty() {
            out.push(' ');
        }
        gap = false;
        out.push(c);
    }
    let out = out.trim();
    match out.char_indices().nth(max_chars) {
        None => out.to_owned(),
        Some(_) => {
            let keep: String = out.chars().take(max_chars.saturating_sub(1)).collect();
            format!("{}…", keep.trim_end())
        }
    }
}

/// True for an `http` or `https` address: any other link (`javascript:`,
/// `data:`) is dropped rather than shown.
fn is_web_link(link: &str) -> bool {
    let lower = link.get(..8).unwrap_or(link).to_ascii_lowercase();
    lower.starts_with("https://") || lower.starts_with("http://")
}

/// The deepest nesting accepted, as serde_json allows when it builds values.
const MAX_DEPTH: usize = 128;

/// How deeply arrays and objects nest in `json` (valid JSON text).
fn nesting_depth(json: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for byte in json.bytes() {
        match (in_string, byte) {
            (true, _) if escaped => escaped = false,
            (true, b'\\') => escaped = true,
            (true, b'"') => in_string = false,
            (true, _) => {}
            (false, b'"') => in_string = true,
            (false, b'[' | b'{') => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            (false, b']' | b'}') => depth = depth.saturating_sub(1),
            (false, _) => {}
        }
    }
    deepest
}

impl<'a> Fields<'a> {
    /// Parses `body` as one JSON object.
    fn parse(body: &'a [u8]) -> Result<Fields<'a>, WebhookError> {
        // First the syntax of the whole body (numbers are not evaluated
        // here), then its shape.
        let raw: &RawValue =
            serde_json::from_slice(body).map_err(|e| WebhookError::InvalidJson(e.to_string()))?;
        if !raw.get().starts_with('{') {
            return Err(WebhookError::NotAnObject);
        }
        if nesting_depth(raw.get()) > MAX_DEPTH {
            return Err(WebhookError::InvalidJson(format!(
                "nested deeper than {MAX_DEPTH} levels"
            )));
        }
        Fields::of(raw, "").map_err(WebhookError::InvalidJson)
    }

    /// The fields of `raw`, a JSON object, named with `prefix`.
    fn of(raw: &'a RawValue, prefix: &'static str) -> Result<Fields<'a>, String> {
        serde_json::from_str(raw.get())
            .map(|Members(members)| Fields { members, prefix })
            .map_err(|e| e.to_string())
    }

    /// The raw value of `field`, a name with this object's prefix.
    fn raw(&self, field: &'static str) -> Option<&'a RawValue> {
        let key = field.strip_prefix(self.prefix).unwrap_or(field);
        self.members
            .iter()
            .rev()
            .find(|(name, _)| name == key)
            .map(|(_, raw)| *raw)
    }

    /// The object under `field`, whose fields are named `prefix` + name
    /// (`prefix` is `field` and a dot); absent or `null` is `None`.
    fn object(
        &self,
        field: &'static str,
        prefix: &'static str,
    ) -> Result<Option<Fields<'a>>, WebhookError> {
        let Some(raw) = self.raw(field).filter(|raw| raw.get() != "null") else {
            return Ok(None);
        };
        let wrong = WebhookError::WrongType {
            field,
            expected: "an object",
        };
        if !raw.get().starts_with('{') {
            return Err(wrong);
        }
        Fields::of(raw, prefix).map(Some).map_err(|_| wrong)
    }

    /// Reads `field` as `kind`; absent or `null` is `None`.
    fn optional<T>(&self, field: &'static str, kind: &Kind<T>) -> Result<Option<T>, WebhookError> {
        let Some(raw) = self.raw(field) else {
            return Ok(None);
        };
        // Only a number out of every range, or a value of another type,
        // fails here: the syntax was checked with the whole body.
        (kind.read)(raw.get()).map_err(|()| WebhookError::WrongType {
            field,
            expected: kind.expected,
        })
    }

    fn required<T>(&self, field: &'static str, kind: &Kind<T>) -> Result<T, WebhookError> {
        self.optional(field, kind)?
            .ok_or(WebhookError::MissingField(field))
    }
}

/// Parses and validates one delivery.
pub fn parse(headers: Headers<'_>, body: &[u8]) -> Result<Delivery, WebhookError> {
    if let Some(content_type) = headers.content_type {
        if !is_json_content_type(content_type) {
            return Err(WebhookError::UnsupportedContentType(
                content_type.to_owned(),
            ));
        }
    }
    let fields = Fields::parse(body)?;
    if k6cloud::is_k6cloud(&headers, &fields) {
        return k6cloud::parse(&headers, &fields);
    }
    let body_event = fields.optional("event", &STRING)?;
    // Where an unknown event came from: the body's field when it has one
    // (a header that names another event is refused before).
    let (from, field) = match body_event {
        Some(_) => ("field `event`", Some("event")),
        None => ("header X-LoadImpact-Event", None),
    };
    let event_name = event_name(("X-LoadImpact-Event", headers.event), ("event", body_event))?;

    let event = match event_name.as_str() {
        EVENT_STARTED => Event::Run(run_event(RunEventKind::Started, &fields)?),
        EVENT_FINISHED => Event::Run(run_event(RunEventKind::Finished, &fields)?),
        EVENT_NOTIFICATION_CHANNEL => Event::NotificationChannel,
        other => {
            return Err(WebhookError::UnknownEvent {
                event: other.to_owned(),
                from,
                field,
                expected: "test.started, test.finished or test.notification_channel",
            })
        }
    };
    let request_ids = header(headers.request_id).map(str::to_owned);
    Ok(Delivery {
        request_ids: request_ids.into_iter().collect(),
        event,
    })
}

fn run_event(kind: RunEventKind, fields: &Fields<'_>) -> Result<RunEvent, WebhookError> {
    Ok(RunEvent {
        kind,
        load_test_run_id: fields.required("load_test_run_id", &ID)?,
        load_test_id: fields.required("load_test_id", &ID)?,
        project: Project {
            organization_id: fields.required("organization_id", &ID)?,
            project_id: fields.required("project_id", &ID)?,
        },
        user_id: fields.optional("user_id", &ID)?,
        name: fields.optional("name", &TEXT)?,
        status: fields.required("status", &INTEGER)?,
        status_text: fields.optional("status_text", &TEXT)?,
        ..RunEvent::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::strategy::Strategy;
    use serde_json::json;

    fn body() -> Value {
        json!({
            "status": 3, "status_text": "Finished", "user_id": 7, "name": "checkout",
            "organization_id": 1, "load_test_id": 10, "load_test_run_id": 100,
            "project_id": 2, "event": "test.finished"
        })
    }

    fn parse_json(headers: Headers<'_>, value: &Value) -> Result<Delivery, WebhookError> {
        parse(headers, value.to_string().as_bytes())
    }

    #[test]
    fn parses_a_finished_event() {
        let delivery = parse_json(
            Headers {
                content_type: Some("application/json; charset=utf-8"),
                event: Some("test.finished"),
                request_id: Some("abc"),
                ..Headers::default()
            },
            &body(),
        )
        .expect("valid");
        assert_eq!(delivery.request_ids, vec!["abc".to_owned()]);
        let Event::Run(run) = delivery.event else {
            panic!("not a run event")
        };
        assert_eq!(run.kind, RunEventKind::Finished);
        assert_eq!(run.load_test_run_id, 100);
        assert_eq!(
            run.project,
            Project {
                organization_id: 1,
                project_id: 2
            }
        );
        assert_eq!(run.status, 3);
        assert_eq!(run.name.as_deref(), Some("checkout"));
    }

    #[test]
    fn escaped_names_and_texts_read_as_written_and_a_repeated_name_reads_its_last_value() {
        // `\u005f` is `_`; the second `project_id` wins, as a JSON map keeps it.
        let body = br#"{"event":"test.finished","status":3,"organization_id":1,
            "load\u005ftest_id":10,"load_test_run_id":100,"project_id":2,"project_id":5,
            "name":"check\tout \"flow\" \u00e9","status_text":"Finished"}"#;
        let delivery = parse(Headers::default(), body).expect("valid");
        let Event::Run(run) = delivery.event else {
            panic!("not a run event")
        };
        assert_eq!(run.load_test_id, 10);
        assert_eq!(run.project.project_id, 5);
        assert_eq!(run.name.as_deref(), Some("check out \"flow\" é"));
        assert_eq!(run.status_text.as_deref(), Some("Finished"));
    }

    #[test]
    fn notification_channel_needs_only_the_event() {
        let d = parse_json(
            Headers::default(),
            &json!({"event": "test.notification_channel"}),
        )
        .expect("valid");
        assert_eq!(d.event, Event::NotificationChannel);
        assert!(d.request_ids.is_empty());
    }

    #[test]
    fn every_required_field_is_named_when_missing() {
        for field in [
            "load_test_run_id",
            "load_test_id",
            "organization_id",
            "project_id",
            "status",
        ] {
            let mut b = body();
            b.as_object_mut().map(|o| o.remove(field));
            assert_eq!(
                parse_json(Headers::default(), &b),
                Err(WebhookError::MissingField(field))
            );
        }
    }

    #[test]
    fn wrong_types_are_named() {
        for (field, bad) in [
            ("load_test_run_id", json!("100")),
            ("project_id", json!(-1)),
            ("status", json!("3")),
            ("status_text", json!(3)),
            ("name", json!(["x"])),
            ("user_id", json!(1.5)),
            ("event", json!(1)),
        ] {
            let mut b = body();
            b[field] = bad;
            let err = parse_json(Headers::default(), &b).expect_err(field);
            assert_eq!(err.status(), 400, "{field}");
            assert_eq!(err.field(), Some(field), "{field}");
            assert!(err.to_string().contains(field), "{err}");
        }
    }

    #[test]
    fn optional_fields_may_be_null_or_absent() {
        let mut b = body();
        b["status_text"] = Value::Null;
        b.as_object_mut().map(|o| o.remove("name"));
        b.as_object_mut().map(|o| o.remove("user_id"));
        assert!(parse_json(Headers::default(), &b).is_ok());
    }

    #[test]
    fn header_and_body_event_must_agree() {
        let err = parse_json(
            Headers {
                event: Some("test.started"),
                ..Headers::default()
            },
            &body(),
        )
        .expect_err("mismatch");
        assert_eq!((err.status(), err.field()), (400, Some("event")));
        // The header alone names the event when the body has none.
        let mut b = body();
        b.as_object_mut().map(|o| o.remove("event"));
        let d = parse_json(
            Headers {
                event: Some("test.started"),
                ..Headers::default()
            },
            &b,
        )
        .expect("header names the event");
        assert_eq!(d.event.name(), "test.started");
        assert_eq!(
            parse_json(Headers::default(), &b),
            Err(WebhookError::MissingField("event"))
        );
    }

    #[test]
    fn unknown_event_is_422_before_fields_are_checked() {
        let err = parse_json(Headers::default(), &json!({"event": "test.created"})).expect_err("");
        assert_eq!((err.status(), err.field()), (422, Some("event")));
        // Named by the header alone: no field of the body is to blame.
        let headers = Headers {
            event: Some("test.created"),
            ..Headers::default()
        };
        let err = parse_json(headers, &json!({})).expect_err("");
        assert_eq!((err.status(), err.field()), (422, None));
        assert!(
            err.to_string().contains("header X-LoadImpact-Event"),
            "{err}"
        );
    }

    #[test]
    fn content_types() {
        for ok in [
            "application/json",
            "Application/JSON; charset=UTF-8",
            "application/vnd.loadimpact+json",
            "text/json",
        ] {
            assert!(is_json_content_type(ok), "{ok}");
        }
        for bad in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "",
            "application/jsonx",
        ] {
            let err = parse(
                Headers {
                    content_type: Some(bad),
                    ..Headers::default()
                },
                b"{}",
            )
            .expect_err(bad);
            assert_eq!(err.status(), 415, "{bad}");
        }
    }

    proptest::proptest! {
        /// Whatever the bytes and headers, parsing returns (a panic fails
        /// the test), and a content type that is not JSON is what a 415
        /// says and nothing else: the other statuses are checked by the
        /// tests above and below.
        #[test]
        fn arbitrary_bytes_never_panic_and_415_means_not_json(
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256),
            event in proptest::option::of("[a-z._]{0,30}"),
            content_type in proptest::option::of(proptest::prop_oneof![
                proptest::prelude::Just("application/json".to_owned()),
                "[a-z/+;= -]{0,30}",
            ]),
        ) {
            let headers = Headers {
                content_type: content_type.as_deref(),
                event: event.as_deref(),
                ..Headers::default()
            };
            let not_json = content_type.as_deref().is_some_and(|c| !is_json_content_type(c));
            match parse(headers, &body) {
                Ok(_) => proptest::prop_assert!(!not_json),
                Err(e) => proptest::prop_assert_eq!(e.status() == 415, not_json, "{:?}", e),
            }
        }

        /// Valid-looking JSON objects with fields of any type: either a run
        /// event with every required field, or an error naming a field.
        #[test]
        fn any_field_types_are_checked(
            values in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::prelude::Just(json!(null)),
                    proptest::prelude::any::<i64>().prop_map(|v| json!(v)),
                    proptest::prelude::any::<bool>().prop_map(|v| json!(v)),
                    "[a-z]{0,5}".prop_map(|v| json!(v)),
                    proptest::prelude::Just(json!([1])),
                ],
                8,
            ),
        ) {
            let fields = ["status", "status_text", "user_id", "name", "organization_id",
                "load_test_id", "load_test_run_id", "project_id"];
            let mut body = serde_json::Map::new();
            body.insert("event".into(), json!("test.finished"));
            for (field, value) in fields.iter().zip(values) {
                body.insert((*field).into(), value);
            }
            let sent = Value::Object(body.clone());
            match parse(Headers::default(), sent.to_string().as_bytes()) {
                // What was read is what was sent.
                Ok(Delivery { event: Event::Run(run), .. }) => {
                    proptest::prop_assert_eq!(json!(run.load_test_run_id), sent["load_test_run_id"].clone());
                    proptest::prop_assert_eq!(json!(run.load_test_id), sent["load_test_id"].clone());
                    proptest::prop_assert_eq!(json!(run.project.project_id), sent["project_id"].clone());
                    proptest::prop_assert_eq!(json!(run.project.organization_id), sent["organization_id"].clone());
                    proptest::prop_assert_eq!(json!(run.status), sent["status"].clone());
                    proptest::prop_assert_eq!(json!(run.user_id), sent["user_id"].clone());
                }
                Ok(other) => proptest::prop_assert!(false, "not a run: {:?}", other),
                Err(e) => {
                    proptest::prop_assert_eq!(e.status(), 400);
                    proptest::prop_assert!(e.field().is_some_and(|f| fields.contains(&f)), "{e:?}");
                }
            }
        }
    }

    #[test]
    fn a_number_no_field_can_hold_is_named() {
        for (field, number) in [
            ("load_test_run_id", "1e400"),
            ("project_id", "-1e400"),
            ("status", "123456789012345678901234567890"),
            ("user_id", "18446744073709551616"),
            ("name", "1e400"),
        ] {
            let mut b = body();
            b[field] = json!(0);
            let text = b
                .to_string()
                .replace(&format!("\"{field}\":0"), &format!("\"{field}\":{number}"));
            let err = parse(Headers::default(), text.as_bytes()).expect_err(field);
            assert_eq!(err.status(), 400, "{field}");
            assert_eq!(err.field(), Some(field), "{field}: {err}");
        }
        // An unknown extra field is never read, whatever number it holds.
        let text = body().to_string().replacen('{', "{\"extra\":1e400,", 1);
        assert!(parse(Headers::default(), text.as_bytes()).is_ok());
    }

    #[test]
    fn nesting_is_measured_outside_strings() {
        assert_eq!(nesting_depth(r#"{"a":[1,{"b":"[[[{\"]\\"}]}"#), 3);
        assert_eq!(nesting_depth("{}"), 1);
        let deep = format!("{{\"x\":{}{}}}", "[".repeat(200), "]".repeat(200));
        assert_eq!(
            parse(Headers::default(), deep.as_bytes()).map_err(|e| e.status()),
            Err(400)
        );
    }

    #[test]
    fn bad_json_and_non_objects() {
        assert_eq!(
            parse(Headers::default(), b"{\"event\":").map_err(|e| e.status()),
            Err(400)
        );
        assert_eq!(
            parse(Headers::default(), b"[1,2]"),
            Err(WebhookError::NotAnObject)
        );
        assert_eq!(
            parse(Headers::default(), b"").map_err(|e| e.status()),
            Err(400)
        );
    }

    #[test]
    fn texts_lose_hidden_characters_and_are_cut_to_length() {
        assert_eq!(clean_text("checkout", MAX_TEXT_CHARS), "checkout");
        assert_eq!(clean_text("  a\r\n\tb\u{1b}[31mc ", 200), "a b [31mc");
        assert_eq!(
            clean_text("x\u{202E}y\u{200B}\u{FEFF}z\u{85}", 200),
            "x y z"
        );
        assert_eq!(clean_text("\u{0}\u{7f}", 200), "");
        assert_eq!(clean_text("été \"flow\" ✓", 200), "été \"flow\" ✓");
        let long = "é".repeat(1000);
        let cut = clean_text(&long, 200);
        assert_eq!(cut.chars().count(), 200);
        assert!(cut.ends_with('…'));
        assert_eq!(clean_text(&"a".repeat(200), 200), "a".repeat(200));
    }

    proptest::proptest! {
        #[test]
        fn a_cleaned_text_is_short_and_shows_no_hidden_character(text in ".*", max in 1usize..300) {
            let clean = clean_text(&text, max);
            proptest::prop_assert!(clean.chars().count() <= max);
            proptest::prop_assert!(!clean.chars().any(is_hidden), "{clean:?}");
            proptest::prop_assert_eq!(clean.trim(), clean.as_str());
            // Cleaning twice changes nothing more.
            proptest::prop_assert_eq!(clean_text(&clean, max), clean.clone());
        }
    }

    #[test]
    fn names_and_status_texts_of_a_delivery_are_cleaned() {
        let body = json!({
            "load_test_run_id": 1, "load_test_id": 2, "organization_id": 3, "project_id": 4,
            "status": 3, "status_text": "Finished\n", "name": format!("a\u{1b}]8;;x\u{7}{}", "n".repeat(5000)),
        });
        let headers = Headers {
            event: Some("test.finished"),
            ..Headers::default()
        };
        let d = parse(headers, body.to_string().as_bytes()).expect("valid");
        let Event::Run(run) = d.event else {
            panic!("a run event")
        };
        assert_eq!(run.status_text.as_deref(), Some("Finished"));
        let name = run.name.unwrap_or_default();
        assert_eq!(name.chars().count(), MAX_TEXT_CHARS);
        assert!(name.starts_with("a ]8;;x n"), "{name}");
    }

    #[test]
    fn only_web_links_are_kept() {
        assert!(is_web_link("https://app.k6.io/runs/1"));
        assert!(is_web_link("HTTP://x"));
        assert!(!is_web_link("javascript:alert(1)"));
        assert!(!is_web_link("data:text/html,x"));
        assert!(!is_web_link("https:"));
        assert!(!is_web_link(""));
    }
}
