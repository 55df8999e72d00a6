//! The outside tools the tests drive (promtool, amtool, kubectl, yamllint, …):
//! finding them, running them and reporting what they said, and starting the
//! servers among them (Prometheus, Alertmanager) on a free port.
//!
//! A missing tool fails the test: `tests/run.sh` installs them all, and a test
//! never passes by skipping.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use super::files::repo;
use super::http;
use super::process::ChildGuard;

/// Finds an outside tool on PATH (or in the project's `.venv-tools/bin`).
pub fn require_tool(name: &str) -> PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv-tools/bin");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::iter::once(venv).chain(std::env::split_paths(&path));
    for dir in dirs {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("`{name}` is not installed: run `bash tests/run.sh`, which installs every tool the tests need");
}

/// Exit status, stdout and stderr of a run, for a failure message.
pub fn describe(output: &Output) -> String {
    format!(
        "exit: {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// What a run wrote to stdout, as text.
pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs `program` in `dir` and returns its output, whatever the exit code.
pub fn run_in(dir: &Path, program: &Path, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", program.display()))
}

/// Runs `program` in `dir` and panics with its output unless it succeeds.
pub fn run_ok_in(dir: &Path, program: &Path, args: &[&str]) -> Output {
    let output = run_in(dir, program, args);
    assert_success(
        &output,
        &format!("`{} {}`", program.display(), args.join(" ")),
    );
    output
}

/// Panics with the output of `what` unless it exited 0.
pub fn assert_success(output: &Output, what: &str) {
    assert!(
        output.status.success(),
        "{what} failed\n{}",
        describe(output)
    );
}

/// Runs `program` in the repository's root; its output, whatever the exit code.
pub fn run(program: &Path, args: &[&str]) -> Output {
    run_in(&repo(), program, args)
}

/// Runs `program` in the repository's root and panics with its output unless
/// it succeeds.
pub fn run_ok(program: &Path, args: &[&str]) -> Output {
    run_ok_in(&repo(), program, args)
}

/// Runs `program` with `input` on its stdin; its output, whatever the exit code.
pub fn run_with_input(program: &Path, args: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {}: {e}", program.display()));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("write to the tool's stdin");
    child.wait_with_output().expect("the tool's output")
}

/// A server tool (Prometheus, Alertmanager) on a free loopback port, with a
/// temporary directory of its own, ready on `/-/ready`, killed on drop.
pub struct Server {
    /// `http://127.0.0.1:PORT`
    pub base: String,
    _process: ChildGuard,
    dir: tempfile::TempDir,
}

impl Server {
    /// Starts `tool` with the arguments `args` gives for its directory (plus
    /// `--web.listen-address`); its stderr goes to `<dir>/<tool>.log`.
    pub fn start(tool: &str, args: impl FnOnce(&Path) -> Vec<String>) -> Server {
        let binary = require_tool(tool);
        let dir = tempfile::tempdir().expect("temp dir");
        let port = http::free_port();
        let log = dir.path().join(format!("{tool}.log"));
        let mut process = ChildGuard::spawn(
            tool,
            Command::new(binary)
                .args(args(dir.path()))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).expect("log file")),
        )
        .with_log(log);
        let base = format!("http://127.0.0.1:{port}");
        process.wait_ready(&format!("{base}/-/ready"), Duration::from_secs(20));
        Server {
            base,
            _process: process,
            dir,
        }
    }

    /// Its own temporary directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}
