//! Classification of Load Impact's run status into a fixed set of outcomes.
//!
//! Load Impact sends both a `status` code and a `status_text`. The text is the
//! more stable of the two (the code tables differ between Load Impact 3.0 and
//! 4.0 / k6 Cloud), so the text decides first and the code, read with the
//! configured table, only when the text is unknown. Pure: no I/O.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The final outcome of a finished run: the `outcome` label's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Finished,
    TimedOut,
    AbortedByUser,
    AbortedBySystem,
    AbortedByScriptError,
    AbortedByThreshold,
    AbortedByLimit,
    FailedThreshold,
    Unknown,
}

impl Outcome {
    /// Every outcome, in the order they are exported.
    pub const ALL: [Outcome; 9] = [
        Outcome::Finished,
        Outcome::TimedOut,
        Outcome::AbortedByUser,
        Outcome::AbortedBySystem,
        Outcome::AbortedByScriptError,
        Outcome::AbortedByThreshold,
        Outcome::AbortedByLimit,
        Outcome::FailedThreshold,
        Outcome::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Finished => "finished",
            Outcome::TimedOut => "timed_out",
            Outcome::AbortedByUser => "aborted_by_user",
            Outcome::AbortedBySystem => "aborted_by_system",
            Outcome::AbortedByScriptError => "aborted_by_script_error",
            Outcome::AbortedByThreshold => "aborted_by_threshold",
            Outcome::AbortedByLimit => "aborted_by_limit",
            Outcome::FailedThreshold => "failed_threshold",
            Outcome::Unknown => "unknown",
        }
    }

    /// True for the `aborted_*` outcomes (`failed_threshold` is not an abort).
    pub fn is_abort(self) -> bool {
        matches!(
            self,
            Outcome::AbortedByUser
                | Outcome::AbortedBySystem
                | Outcome::AbortedByScriptError
                | Outcome::AbortedByThreshold
                | Outcome::AbortedByLimit
        )
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which status code table `status` is read with when `status_text` is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum StatusTable {
    /// Load Impact 3.0: 3 Finished … 12 Failed threshold.
    #[default]
    V3,
    /// Load Impact 4.0 and k6 Cloud: 3 Finished … 9 Aborted by limit.
    V4,
}

/// Classifies a finished run from its `status_text` and `status` code.
pub fn classify(status_text: Option<&str>, status: i64, table: StatusTable) -> Outcome {
    status_text
        .and_then(from_text)
        .unwrap_or_else(|| from_code(status, table))
}

/// Classifies a finished run that Grafana Cloud k6 reported: status Finished
/// with a failed result is `failed_threshold`; otherwise the outcome the event
/// identifier names, when it names one, else the text, else the code read
/// with the k6 table (whatever `--status-table` says).
pub fn classify_k6cloud(
    event_outcome: Option<Outcome>,
    status_text: Option<&str>,
    status: i64,
    result_failed: bool,
) -> Outcome {
    let by_status = classify(status_text, status, StatusTable::V4);
    if result_failed && by_status == Outcome::Finished {
        return Outcome::FailedThreshold;
    }
    event_outcome.unwrap_or(by_status)
}

/// The outcome named by a status text, if it names one. Case-insensitive, and
/// "Aborting by X" (the transient state) counts as "Aborted by X".
pub fn from_text(text: &str) -> Option<Outcome> {
    let normalized = text
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_ascii_lowercase();
    let normalized = match normalized.strip_prefix("aborting by ") {
        Some(rest) => format!("aborted by {rest}"),
        None => normalized,
    };
    Some(match normalized.as_str() {
        "finished" => Outcome::Finished,
        "timed out" => Outcome::TimedOut,
        "aborted by user" => Outcome::AbortedByUser,
        "aborted by system" => Outcome::AbortedBySystem,
        "aborted by script error" => Outcome::AbortedByScriptError,
        "aborted by threshold" => Outcome::AbortedByThreshold,
        "aborted by limit" => Outcome::AbortedByLimit,
        "failed threshold" => Outcome::FailedThreshold,
        _ => return None,
    })
}

/// The outcome a status code means in `table`; `Unknown` for codes that are
/// not final states (created, queued, running, …) or not in the table.
pub fn from_code(status: i64, table: StatusTable) -> Outcome {
    match table {
        StatusTable::V3 => match status {
            3 => Outcome::Finished,
            4 => Outcome::TimedOut,
            5 | 6 => Outcome::AbortedByUser,
            7 | 8 => Outcome::AbortedBySystem,
            9 => Outcome::AbortedByScriptError,
            10 | 11 => Outcome::AbortedByThreshold,
            12 => Outcome::FailedThreshold,
            _ => Outcome::Unknown,
        },
        StatusTable::V4 => match status {
            3 => Outcome::Finished,
            4 => Outcome::TimedOut,
            5 => Outcome::AbortedByUser,
            6 => Outcome::AbortedBySystem,
            7 => Outcome::AbortedByScriptError,
            8 => Outcome::AbortedByThreshold,
            9 => Outcome::AbortedByLimit,
            _ => Outcome::Unknown,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_wins_over_code() {
        // Code 12 is failed threshold in v3, but the text says finished.
        assert_eq!(
            classify(Some("Finished"), 12, StatusTable::V3),
            Outcome::Finished
        );
    }

    #[test]
    fn text_is_case_insensitive_and_aborting_counts_as_aborted() {
        assert_eq!(
            from_text("ABORTING BY  threshold"),
            Some(Outcome::AbortedByThreshold)
        );
        assert_eq!(from_text("aborted by limit"), Some(Outcome::AbortedByLimit));
        assert_eq!(from_text(" Timed out "), Some(Outcome::TimedOut));
        assert_eq!(from_text("Running"), None);
        assert_eq!(from_text(""), None);
    }

    #[test]
    fn unknown_text_falls_back_to_the_configured_table() {
        assert_eq!(
            classify(Some("Something new"), 9, StatusTable::V3),
            Outcome::AbortedByScriptError
        );
        assert_eq!(
            classify(Some("Something new"), 9, StatusTable::V4),
            Outcome::AbortedByLimit
        );
        assert_eq!(
            classify(None, 8, StatusTable::V4),
            Outcome::AbortedByThreshold
        );
    }

    #[test]
    fn k6cloud_result_then_event_then_text_then_code() {
        use Outcome::*;
        assert_eq!(
            classify_k6cloud(None, Some("Finished"), 3, true),
            FailedThreshold
        );
        assert_eq!(
            classify_k6cloud(Some(Finished), None, 3, true),
            FailedThreshold
        );
        assert_eq!(classify_k6cloud(None, None, 3, false), Finished);
        assert_eq!(
            classify_k6cloud(Some(AbortedByLimit), Some("Finished"), 3, false),
            AbortedByLimit
        );
        assert_eq!(
            classify_k6cloud(None, Some("Aborted by user"), 9, false),
            AbortedByUser
        );
        // The k6 table, not Load Impact 3.0's: 9 is aborted by limit there.
        assert_eq!(classify_k6cloud(None, None, 9, false), AbortedByLimit);
        // A failed result on an aborted run keeps the abort.
        assert_eq!(classify_k6cloud(None, None, 5, true), AbortedByUser);
    }

    #[test]
    fn every_code_of_both_tables() {
        use Outcome::*;
        let v3 = [
            (-1, Unknown),
            (0, Unknown),
            (1, Unknown),
            (2, Unknown),
            (3, Finished),
            (4, TimedOut),
            (5, AbortedByUser),
            (6, AbortedByUser),
            (7, AbortedBySystem),
            (8, AbortedBySystem),
            (9, AbortedByScriptError),
            (10, AbortedByThreshold),
            (11, AbortedByThreshold),
            (12, FailedThreshold),
            (13, Unknown),
        ];
        for (code, want) in v3 {
            assert_eq!(from_code(code, StatusTable::V3), want, "v3 code {code}");
        }
        let v4 = [
            (-2, Unknown),
            (-1, Unknown),
            (0, Unknown),
            (1, Unknown),
            (2, Unknown),
            (3, Finished),
            (4, TimedOut),
            (5, AbortedByUser),
            (6, AbortedBySystem),
            (7, AbortedByScriptError),
            (8, AbortedByThreshold),
            (9, AbortedByLimit),
            (10, Unknown),
        ];
        for (code, want) in v4 {
            assert_eq!(from_code(code, StatusTable::V4), want, "v4 code {code}");
        }
    }

    #[test]
    fn failed_threshold_is_not_an_abort() {
        assert!(!Outcome::FailedThreshold.is_abort());
        assert!(Outcome::AbortedByThreshold.is_abort());
        assert_eq!(Outcome::ALL.iter().filter(|o| o.is_abort()).count(), 5);
    }
}
