//! Child processes the tests start (the exporter, Prometheus, Alertmanager,
//! strace, `simulate` runs): one guard that kills and reaps them when the
//! test ends, pass or fail, with a ready-wait that fails as soon as the
//! process exits, and signals by name. Plus the `/proc` reads that tell
//! whether a process lives and which children it has.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output};
use std::time::Duration;

use super::{http, wait_for};

/// A running child process, killed (and reaped) on drop; its own children
/// first (a wrapper such as strace killed alone would leave its tracee).
pub struct ChildGuard {
    child: Option<Child>,
    /// What it is, for messages.
    name: String,
    /// Where its output goes, quoted when it dies during start-up.
    log: Option<PathBuf>,
}

impl ChildGuard {
    /// Spawns `command`; `name` says what it is in messages.
    pub fn spawn(name: &str, command: &mut Command) -> ChildGuard {
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        ChildGuard {
            child: Some(child),
            name: name.to_owned(),
            log: None,
        }
    }

    /// Names the file its output goes to, for the messages of `wait_ready`.
    pub fn with_log(mut self, log: PathBuf) -> ChildGuard {
        self.log = Some(log);
        self
    }

    fn child(&mut self) -> &mut Child {
        self.child
            .as_mut()
            .expect("the process was already waited for")
    }

    pub fn id(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The exit status, if it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child().try_wait().expect("try_wait")
    }

    /// Waits until `GET url` answers 200; panics at once (with its log) if the
    /// process exits first, or after `timeout`.
    pub fn wait_ready(&mut self, url: &str, timeout: Duration) {
        self.wait_until(url, timeout, || {
            http::try_get(url).is_some_and(|r| r.status == 200)
        });
    }

    /// Waits until `ready()` (`what` says what it checks); panics at once
    /// (with its log) if the process exits first, or after `timeout`.
    pub fn wait_until(&mut self, what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
        let what = format!("{} to be ready ({what})", self.name);
        wait_for(&what, timeout, || {
            if let Some(status) = self.try_wait() {
                let log = self
                    .log
                    .as_ref()
                    .map(|p| std::fs::read_to_string(p).unwrap_or_default())
                    .unwrap_or_default();
                panic!("{} exited during start-up: {status}\n{log}", self.name);
            }
            ready().then_some(())
        });
    }

    /// Waits for the exit, at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let what = format!("{} to exit", self.name);
        let status = wait_for(&what, timeout, || self.try_wait());
        self.child = None;
        status
    }

    /// Sends `signal` (a name for `kill`, e.g. "TERM") and waits for the exit
    /// status, at most `timeout`.
    pub fn stop(&mut self, signal: &str, timeout: Duration) -> ExitStatus {
        send_signal(self.id(), signal);
        self.wait_exit(timeout)
    }

    /// `kill -9` of its children, then of itself, and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            for pid in children_of(child.id()) {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits for the exit and collects what it wrote to piped stdout and stderr.
    pub fn output(mut self) -> Output {
        let child = self.child.take().expect("running");
        child.wait_with_output().expect("wait for the child")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `kill -<signal> <pid>`, which must succeed.
pub fn send_signal(pid: u32, signal: &str) {
    let sent = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(sent.success(), "kill -{signal} {pid} failed");
}

/// The pids of `pid`'s children.
pub fn children_of(pid: u32) -> Vec<u32> {
    let path = format!("/proc/{pid}/task/{pid}/children");
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Whether process `pid` has exited (a zombie not yet reaped counts).
pub fn has_exited(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            stat.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z'))
        })
        .unwrap_or(true)
}
