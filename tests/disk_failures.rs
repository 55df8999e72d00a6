//! Disk failures: a 200 only after the store's fsync completed (the exporter
//! runs under strace, which records every call), and fsyncs that fail with EIO
//! (strace attached to the running exporter injects the errors, then
//! detaches): the delivery is answered 503, changes nothing, and the retries
//! Load Impact makes are accepted once the disk is back, in place or after the
//! restart a supervisor makes.
//!
//! Written from the specification, not from the exporter's code.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use support::deliveries::{Delivery, Run};
use support::exporter::Exporter;
use support::http::{self, Response};
use support::process::{has_exited, ChildGuard};
use support::samples::*;
use support::tools::require_tool;
use support::wait_for;

/// "A 200 is only sent after fsync": the exporter runs under `strace`, and each
/// `{"result":"accepted"}` answer must come after an fsync or fdatasync of a
/// file under `--storage.path` that completed after its request was read (the
/// requests are sent one at a time).
#[test]
fn every_acknowledgement_follows_a_completed_fsync() {
    let strace = require_tool("strace");
    let dir = tempfile::tempdir().expect("temp dir");
    let trace = dir.path().join("trace.txt");
    let mut exporter = Exporter::builder()
        .wrapped_in(
            &strace,
            [
                "-f",
                "-qq",
                "-s",
                "256",
                "-o",
                trace.to_str().expect("a UTF-8 path"),
                "-e",
                "trace=openat,fsync,fdatasync,read,readv,recvfrom,recvmsg,write,writev,sendto,sendmsg",
                "--",
            ],
        )
        .start();
    const RUNS: u64 = 5;
    for id in 0..RUNS {
        let run = Run::new(1, 1, 1, id);
        for body in [run.started(), run.finished(3, None)] {
            exporter.post_expect(&body, "accepted");
        }
    }
    let status = exporter.terminate();
    assert!(status.success(), "exporter under strace: {status}");

    let text = std::fs::read_to_string(&trace).expect("read the trace");
    let store = exporter.storage().display().to_string();
    let (mut request_read, mut synced, mut acknowledged) = (false, false, 0);
    let mut store_fds = std::collections::BTreeSet::new();
    let mut syncing = std::collections::BTreeMap::new(); // pid -> fd, while unfinished
    for line in text.lines() {
        let (pid, call) = line.split_once(' ').unwrap_or(("", line));
        let call = call.trim_start();
        let sync = ["fsync(", "fdatasync("]
            .iter()
            .find_map(|name| call.strip_prefix(name))
            .map(|rest| {
                rest.split(|c: char| !c.is_ascii_digit())
                    .next()
                    .unwrap_or("")
            });
        if call.starts_with("openat(") && call.contains(&format!("\"{store}/")) {
            if let Some((_, fd)) = call.rsplit_once("= ") {
                store_fds.insert(fd.trim().to_owned());
            }
        } else if call.contains("POST /webhook ") {
            (request_read, synced) = (true, false);
        } else if let Some(fd) = sync {
            if call.ends_with("<unfinished ...>") {
                syncing.insert(pid.to_owned(), fd.to_owned());
            } else if call.ends_with("= 0") && store_fds.contains(fd) {
                synced |= request_read;
            }
        } else if call.starts_with("<... fsync resumed>")
            || call.starts_with("<... fdatasync resumed>")
        {
            let fd = syncing.remove(pid).unwrap_or_default();
            if call.ends_with("= 0") && store_fds.contains(&fd) {
                synced |= request_read;
            }
        } else if call.contains("HTTP/1.1 200") && call.contains("accepted") {
            assert!(
                request_read && synced,
                "a 200 without a completed fsync of the store since its request was read: {line}"
            );
            (request_read, synced) = (false, false);
            acknowledged += 1;
        }
    }
    assert!(!store_fds.is_empty(), "no file opened under {store}");
    assert_eq!(acknowledged, 2 * RUNS, "answers found in the trace");
}

/// Whether every thread of `pid` is traced by `tracer` (or, with 0, by nobody).
fn traced_by(pid: u32, tracer: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.filter_map(Result::ok).all(|task| {
        std::fs::read_to_string(task.path().join("status"))
            .unwrap_or_default()
            .lines()
            .any(|l| {
                l.split_whitespace().collect::<Vec<_>>() == ["TracerPid:", &tracer.to_string()]
            })
    })
}

/// strace attached to the running exporter `pid`, failing its fsyncs with EIO:
/// the invocations `when` of each thread (strace's syntax, e.g. "1"), or all.
fn fail_fsyncs(pid: u32, when: Option<&str>) -> ChildGuard {
    let inject = match when {
        Some(when) => format!("inject=fsync,fdatasync:error=EIO:when={when}"),
        None => "inject=fsync,fdatasync:error=EIO".to_owned(),
    };
    let tracer = ChildGuard::spawn(
        "strace",
        Command::new(require_tool("strace"))
            .args(["-f", "-qq", "-o", "/dev/null", "-p", &pid.to_string()])
            .args(["-e", "trace=fsync,fdatasync", "-e", &inject])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_for("strace to attach", Duration::from_secs(10), || {
        traced_by(pid, tracer.id()).then_some(())
    });
    tracer
}

/// Detaches strace from `pid`: the disk is healthy again.
fn detach(mut tracer: ChildGuard, pid: u32) {
    tracer.stop("TERM", Duration::from_secs(20));
    wait_for("strace to detach", Duration::from_secs(10), || {
        (has_exited(pid) || traced_by(pid, 0)).then_some(())
    });
}

/// Posts `body` with `id` and asserts the 503 of a store that cannot commit.
fn expect_503(exporter: &Exporter, body: &Value, id: &str) {
    let resp = exporter.post_id(body, id);
    assert_eq!(
        resp.status, 503,
        "a delivery the store could not commit: {}",
        resp.body
    );
    assert_eq!(resp.json()["result"], json!("rejected"), "{}", resp.body);
}

/// Load Impact retrying one delivery: posts it until a 200 (for up to 10 s),
/// adding the 503s to `refused`. `None` when the exporter exited instead, or
/// (with `unhealthy_ends`) said it is unhealthy: its supervisor restarts it.
fn retry(
    exporter: &Exporter,
    body: &Value,
    id: &str,
    refused: &mut usize,
    unhealthy_ends: bool,
) -> Option<Response> {
    let pid = exporter.pid();
    let delivery = Delivery::new(body, id);
    wait_for(
        "a retry of a 503'd delivery to get 200, or the exporter to exit or fail \
         /-/healthy (it kept answering 503 while alive and healthy)",
        Duration::from_secs(10),
        || {
            let unhealthy = unhealthy_ends
                && http::try_get(&exporter.url("/-/healthy")).is_none_or(|r| r.status != 200);
            if has_exited(pid) || unhealthy {
                return Some(None);
            }
            match delivery.try_send(&exporter.url("/webhook")) {
                Some(r) if r.status == 200 => Some(Some(r)),
                Some(r) if r.status == 503 => {
                    *refused += 1;
                    None
                }
                Some(r) => panic!("a retry got {} {}", r.status, r.body),
                None => Some(None),
            }
        },
    )
}

/// After `retry`: in place, the result is accepted (or duplicate: the failed
/// commit reached the disk after all) and every 503 is counted; otherwise the
/// exporter is restarted as its supervisor would, and the retry succeeds.
fn after_retry(
    exporter: &mut Exporter,
    retried: Option<Response>,
    body: &Value,
    id: &str,
    refused: usize,
) {
    match retried {
        Some(resp) => {
            let result = resp.json()["result"].clone();
            assert!(
                result == json!("accepted") || result == json!("duplicate"),
                "{result}"
            );
            assert_value(&exporter.samples(), &requests_total(503), refused as f64);
        }
        None => {
            exporter.kill9();
            exporter.restart();
            let resp = exporter.post_id(body, id);
            assert_eq!(resp.status, 200, "retry after the restart: {}", resp.body);
        }
    }
}

/// One fsync of the store fails (strace attached to the running exporter
/// injects EIO once, then detaches). That delivery gets 503 and "the sender
/// retries": a retry must succeed within seconds, either because the exporter
/// recovered in place, or because it exited or declared itself unhealthy and
/// its supervisor restarted it. It must not keep answering 503 while it lives
/// and says it is healthy. Whatever got a 200 survives a `kill -9`.
#[test]
fn a_transient_fsync_failure_is_answered_503_and_then_recovered() {
    let mut exporter = Exporter::start(&[]);
    let run = |id| Run::new(1, 1, 1, id);
    exporter.post_id_expect(&run(1).started(), "id-1", "accepted");

    let pid = exporter.pid();
    let tracer = fail_fsyncs(pid, Some("1"));
    let failing = run(2).started();
    expect_503(&exporter, &failing, "id-2");
    detach(tracer, pid);

    let mut refused = 1;
    let retried = retry(&exporter, &failing, "id-2", &mut refused, true);
    after_retry(&mut exporter, retried, &failing, "id-2", refused);
    exporter.post_id_expect(&run(3).started(), "id-3", "accepted");
    exporter.kill9();
    exporter.restart();
    let s = exporter.samples();
    assert_value(&s, &run(1).started_total(), 3.0);
    assert_value(&s, &run(1).running(), 3.0);
}

/// Asserts that no series but the count of 503 answers moved since `before`.
fn assert_nothing_moved_but_503s(before: &Samples, exporter: &Exporter, what: &str) {
    let mut moved = changes(before, &exporter.samples());
    moved.remove(&requests_total(503));
    assert!(moved.is_empty(), "{what}, the metrics show: {moved:#?}");
}

/// Waits (at most 10 s) until both `/-/ready` and `/-/healthy` answer `status`.
fn wait_until_ready_and_healthy_say(exporter: &Exporter, status: u16) {
    let answer = |path: &str| http::get(&exporter.url(path)).status;
    wait_for(
        &format!("/-/ready and /-/healthy to say {status}"),
        Duration::from_secs(10),
        || (answer("/-/ready") == status && answer("/-/healthy") == status).then_some(()),
    );
}

/// Every fsync fails for a while (a failing disk): deliveries get 503 and
/// change nothing, the exporter is not ready ("ready once the store is open";
/// README: `/-/ready` is 200 while the store takes writes, `/-/healthy` 503 when
/// it cannot be reopened). Once the disk is back, Load Impact's retries are
/// accepted, readiness returns, and every 503 answered is counted.
#[test]
fn a_failing_disk_makes_the_exporter_unready_until_it_recovers() {
    let mut exporter = Exporter::start(&[]);
    let run = |id| Run::new(2, 2, 2, id);
    exporter.post_expect(&run(1).started(), "accepted");
    let pid = exporter.pid();
    let before = exporter.samples();
    let tracer = fail_fsyncs(pid, None);
    for id in 2..5 {
        expect_503(&exporter, &run(id).started(), &format!("disk-{id}"));
        // Not stored, so not counted (the 503s themselves may be counted late).
        let what = format!("after {} deliveries answered 503", id - 1);
        assert_nothing_moved_but_503s(&before, &exporter, &what);
    }
    // A group of concurrent deliveries fails together, and shows nothing either.
    std::thread::scope(|scope| {
        for id in 10..18 {
            let exporter = &exporter;
            scope.spawn(move || expect_503(exporter, &run(id).started(), &format!("disk-{id}")));
        }
    });
    assert_nothing_moved_but_503s(&before, &exporter, "after concurrent 503s");
    wait_until_ready_and_healthy_say(&exporter, 503);
    detach(tracer, pid);

    let mut refused = 11;
    for id in (2..5).chain(10..18) {
        let (body, id) = (run(id).started(), format!("disk-{id}"));
        let retried = retry(&exporter, &body, &id, &mut refused, false);
        after_retry(&mut exporter, retried, &body, &id, refused);
    }
    wait_until_ready_and_healthy_say(&exporter, 200);
    let before = exporter.samples();
    assert_value(&before, &run(1).started_total(), 12.0);
    exporter.kill9();
    exporter.restart();
    assert!(
        changes(&before, &exporter.samples()).is_empty(),
        "state after kill -9"
    );
}
