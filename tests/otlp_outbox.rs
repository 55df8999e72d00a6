//! OpenTelemetry, the durable outbox: every run's span reaches the collector
//! exactly once, whatever happens on the way. The collector down then up,
//! refusing, hanging, restarting under a connection; the exporter killed
//! (`kill -9`) or stopped between a start and its finish, or with spans
//! pending; retried and repeated webhooks; a finish with no start; runs that
//! expire, across a restart too.
//!
//! Every test runs the real binary against a real OTLP receiver in-process
//! (`otlp_receiver`), and checks the decoded spans field by field.

mod otlp_receiver;
mod support;

use std::time::Duration;

use otlp_receiver::spans::*;
use otlp_receiver::{Protocol, Receiver};
use support::deliveries::Run;
use support::{now_ns, wait_for};

/// Collector down, then up (gRPC): the spans wait in the outbox, failed
/// attempts are counted, and every span arrives once when it is back. Then the
/// collector answers `Unavailable` for a while: same again.
#[test]
fn receiver_down_then_up_grpc() {
    let mut receiver = Receiver::down_on_free_port(Protocol::Grpc);
    let exporter = pointed_at(&receiver).start();
    let a = run_info(4000);
    let b = run_info(4001);
    let a_start = start_run(&exporter, &a);
    let b_start = start_run(&exporter, &b);
    let a_end = finish_run(&exporter, &a, 3, "Finished");
    let b_end = finish_run(&exporter, &b, 9, "Aborted by script error");

    wait_metric(&exporter, "loadimpact_span_export_failures_total", |v| {
        v >= 2.0
    });
    assert_eq!(exporter.sample("loadimpact_spans_pending"), 2.0);
    assert_eq!(exporter.sample("loadimpact_spans_exported_total"), 0.0);

    receiver.up();
    let a_span = arrived_once(&receiver, a.id);
    let b_span = arrived_once(&receiver, b.id);
    assert_span(&a_span, &finished_ok(&a, Some(a_start), a_end));
    assert_span(
        &b_span,
        &Expect {
            info: &b,
            start: Some(b_start),
            end: b_end,
            status: 9,
            status_text: "Aborted by script error",
            outcome: "aborted_by_script_error",
            suite_status: "aborted",
            ok: false,
        },
    );
    wait_metric(&exporter, "loadimpact_spans_pending", |v| v == 0.0);
    assert_eq!(exporter.sample("loadimpact_spans_exported_total"), 2.0);

    // The collector is up but refuses (Unavailable): retried, counted, then delivered.
    let failures_before = exporter.sample("loadimpact_span_export_failures_total");
    receiver.fail();
    let c = run_info(4002);
    start_run(&exporter, &c);
    finish_run(&exporter, &c, 3, "Finished");
    wait_for("two refused export attempts", ARRIVAL, || {
        (receiver.rejected() >= 2).then_some(())
    });
    wait_metric(&exporter, "loadimpact_span_export_failures_total", |v| {
        v >= failures_before + 2.0
    });
    assert_eq!(exporter.sample("loadimpact_spans_pending"), 1.0);
    receiver.accept();
    arrived_once(&receiver, c.id);
    wait_metric(&exporter, "loadimpact_spans_exported_total", |v| v == 3.0);
    assert_eq!(exporter.sample("loadimpact_spans_pending"), 0.0);
    // Each refused attempt was counted once (all of them ended before the
    // accepted one began).
    assert_eq!(
        exporter.sample("loadimpact_span_export_failures_total") - failures_before,
        receiver.rejected() as f64,
        "loadimpact_span_export_failures_total counts the refused attempts"
    );

    // The collector restarts under an established connection: the exporter
    // reconnects.
    receiver.down();
    let failures_before = exporter.sample("loadimpact_span_export_failures_total");
    let d = run_info(4003);
    start_run(&exporter, &d);
    finish_run(&exporter, &d, 3, "Finished");
    wait_metric(&exporter, "loadimpact_span_export_failures_total", |v| {
        v > failures_before
    });
    receiver.up();
    arrived_once(&receiver, d.id);
    wait_metric(&exporter, "loadimpact_spans_exported_total", |v| v == 4.0);
    std::thread::sleep(QUIET);
    assert_exactly_once(&receiver, &[4000, 4001, 4002, 4003]);
    assert_eq!(exporter.sample("loadimpact_spans_pending"), 0.0);
}

/// `--otlp.timeout`: an export to a collector that hangs is abandoned after the
/// timeout, counted as failed and retried; the span arrives once the collector
/// answers again.
fn hanging_collector(protocol: Protocol, run: u64) {
    let receiver = Receiver::start(protocol);
    let exporter = pointed_at(&receiver).arg("--otlp.timeout=1s").start();
    receiver.stall(Duration::from_secs(60));
    let info = run_info(run);
    let start = start_run(&exporter, &info);
    let end = finish_run(&exporter, &info, 3, "Finished");
    // With the 1 s timeout and 1 s backoff cap, two abandoned attempts take a
    // few seconds; the default 10 s timeout would not get there in time.
    let deadline = Duration::from_secs(8);
    wait_for("two abandoned export attempts", deadline, || {
        (receiver.stalled() >= 2).then_some(())
    });
    wait_metric(&exporter, "loadimpact_span_export_failures_total", |v| {
        v >= 2.0
    });
    assert_eq!(exporter.sample("loadimpact_spans_pending"), 1.0);
    receiver.accept();
    let span = arrived_once(&receiver, run);
    assert_span(&span, &finished_ok(&info, Some(start), end));
    wait_metric(&exporter, "loadimpact_spans_pending", |v| v == 0.0);
}

#[test]
fn hanging_collector_grpc() {
    hanging_collector(Protocol::Grpc, 4100);
}

#[test]
fn hanging_collector_http() {
    hanging_collector(Protocol::HttpProtobuf, 4200);
}

/// `kill -9` between a run's start and its finish: the span keeps the start
/// received by the first process.
#[test]
fn kill9_between_start_and_finish_keeps_the_start() {
    let receiver = Receiver::start(Protocol::HttpProtobuf);
    let mut exporter = pointed_at(&receiver).start();
    let info = run_info(5000);
    let start = start_run(&exporter, &info);
    exporter.kill9();
    exporter.restart();
    let end = finish_run(&exporter, &info, 3, "Finished");
    assert!(end.lo > start.hi, "the finish came after the restart");
    let span = arrived_once(&receiver, info.id);
    assert_span(&span, &finished_ok(&info, Some(start), end));
}

/// Killed (`kill -9`) while spans wait for a collector that is down, then
/// restarted and stopped (SIGTERM) with the collector still down: after the
/// last restart they arrive, once, with their original timestamps.
#[test]
fn kill_while_pending_then_restart() {
    let mut receiver = Receiver::down_on_free_port(Protocol::Grpc);
    let mut exporter = pointed_at(&receiver).start();
    let runs: Vec<Run> = (6000..6003).map(run_info).collect();
    let mut brackets = Vec::new();
    for info in &runs {
        let start = start_run(&exporter, info);
        let end = finish_run(&exporter, info, 3, "Finished");
        brackets.push((start, end));
    }
    wait_metric(&exporter, "loadimpact_spans_pending", |v| v == 3.0);
    wait_metric(&exporter, "loadimpact_span_export_failures_total", |v| {
        v >= 1.0
    });
    exporter.kill9();

    // Back with the collector still down: the spans are still pending. A
    // graceful stop now is prompt (the export loop does not hold it up) and
    // keeps them too.
    exporter.restart();
    assert_eq!(exporter.sample("loadimpact_spans_pending"), 3.0);
    let stopped = exporter.terminate();
    assert!(stopped.success(), "SIGTERM with spans pending: {stopped}");

    receiver.up();
    let restarted_at = now_ns();
    exporter.restart();
    for (info, (start, end)) in runs.iter().zip(&brackets) {
        let span = arrived_once(&receiver, info.id);
        assert!(
            span.span.end_time_unix_nano < restarted_at,
            "run {}: original end kept",
            info.id
        );
        assert_span(&span, &finished_ok(info, Some(*start), *end));
    }
    wait_metric(&exporter, "loadimpact_spans_pending", |v| v == 0.0);
    std::thread::sleep(QUIET);
    assert_exactly_once(&receiver, &[6000, 6001, 6002]);
}

/// Retried deliveries (same X-LoadImpact-ID) and repeated events (new ids)
/// make one span, with the first start and the first finish.
#[test]
fn duplicate_webhooks_make_one_span() {
    let receiver = Receiver::start(Protocol::Grpc);
    let exporter = pointed_at(&receiver).start();
    let info = run_info(7000);
    let finished = info.finished(3, Some("Finished"));
    let start = post(&exporter, &info.started(), "dup-start");
    let end = post(&exporter, &finished, "dup-finish");
    let repeats = [
        (info.started(), "dup-start"),
        (info.started(), "dup-start-again"),
        (finished.clone(), "dup-finish"),
        (
            info.finished(5, Some("Aborted by user")),
            "dup-finish-other",
        ),
        (info.started(), "dup-start-late"),
    ];
    for (body, request_id) in &repeats {
        post(&exporter, body, request_id);
    }

    let span = arrived_once(&receiver, info.id);
    assert_span(&span, &finished_ok(&info, Some(start), end));
    wait_metric(&exporter, "loadimpact_spans_exported_total", |v| v == 1.0);
    // The same deliveries after the span was acknowledged, and a new one: still one.
    for (body, request_id) in &repeats {
        post(&exporter, body, request_id);
    }
    post(&exporter, &finished, "dup-finish-after-ack");
    std::thread::sleep(QUIET);
    assert_exactly_once(&receiver, &[7000]);
    assert_eq!(exporter.sample("loadimpact_spans_exported_total"), 1.0);
    assert_eq!(exporter.sample("loadimpact_spans_pending"), 0.0);
}

/// A finish with no start: a zero-length span at the finish, marked
/// `loadimpact.start_unknown`, with only the `finished` event.
#[test]
fn finish_without_start() {
    let receiver = Receiver::start(Protocol::HttpProtobuf);
    let exporter = pointed_at(&receiver).start();
    let info = run_info(8000);
    let end = finish_run(&exporter, &info, 12, "Failed threshold");
    let span = arrived_once(&receiver, info.id);
    assert_span(
        &span,
        &Expect {
            info: &info,
            start: None,
            end,
            status: 12,
            status_text: "Failed threshold",
            outcome: "failed_threshold",
            suite_status: "failure",
            ok: false,
        },
    );
}

/// A run with no finish within `--run.max-duration` ends its span at the
/// expiry: outcome `expired`, status Error, events `started` and `expired`.
/// A finish that comes later makes no second span.
#[test]
fn expired_run() {
    let receiver = Receiver::start(Protocol::Grpc);
    let exporter = pointed_at(&receiver).arg("--run.max-duration=2s").start();
    let info = run_info(9000);
    let start = start_run(&exporter, &info);
    let span = arrived_once(&receiver, info.id);
    assert_expired(&span, &info, start, now_ns());

    finish_run(&exporter, &info, 3, "Finished");
    std::thread::sleep(QUIET);
    assert_exactly_once(&receiver, &[9000]);
}

/// Killed after a run's start, and back only after its max duration: the run
/// still expires, and its span keeps the original start.
#[test]
fn expiry_across_a_restart() {
    let receiver = Receiver::start(Protocol::HttpProtobuf);
    let mut exporter = pointed_at(&receiver).arg("--run.max-duration=2s").start();
    let info = run_info(9050);
    let start = start_run(&exporter, &info);
    exporter.kill9();
    std::thread::sleep(Duration::from_millis(2100));
    exporter.restart();
    let span = arrived_once(&receiver, info.id);
    assert_expired(&span, &info, start, now_ns());
}
