//! The one launcher of the `loadimpact-exporter` binary. `Exporter::start`
//! covers most tests; `Exporter::builder` sets what else a test needs: the
//! environment (set and removed variables), the working directory, a log
//! file, a wrapper command (strace), where the store is. Every start listens
//! on a free loopback port and waits for `/-/ready`, failing at once if the
//! process exits. The process is killed when the `Exporter` is dropped; it can
//! be `kill -9`ed, stopped by a signal with its exit status, and restarted on
//! the same store.
//!
//! The exporter's logs go nowhere unless the test names a log file, or
//! `EXPORTER_LOGS=1` is set (then they go to the test's stderr).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use super::deliveries::{self, expect_result, fresh_id};
use super::http::{self, Response};
use super::process::{children_of, send_signal, ChildGuard};
use super::samples::{self, Samples};
use super::wait_for;

/// Path of the exporter binary built by cargo for these tests.
pub fn exporter_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_loadimpact-exporter"))
}

/// Runs the binary with `args` to its end (a subcommand or `--help`, not the
/// server); its output.
pub fn run_binary(args: &[&str]) -> Output {
    spawn_binary(args).output()
}

/// Starts the binary with `args`, stdout and stderr piped, guarded.
pub fn spawn_binary(args: &[&str]) -> ChildGuard {
    ChildGuard::spawn(
        &format!("loadimpact-exporter {}", args.join(" ")),
        Command::new(exporter_bin())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )
}

/// The variables of the test's own environment that would point the exporter
/// at a real collector; removed before every start.
const REMOVED_BY_DEFAULT: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
];

/// Where the store is.
#[derive(Clone)]
enum Storage {
    /// `--storage.path` in a temporary directory of the `Exporter`'s own.
    Temporary,
    /// `--storage.path` here.
    At(PathBuf),
    /// No `--storage.path`: the binary's default, `./data` under the
    /// working directory.
    Default,
}

/// How to start the exporter; `Exporter::builder()` makes one.
#[derive(Clone)]
pub struct Launch {
    args: Vec<OsString>,
    /// Applied in order after `REMOVED_BY_DEFAULT`: `Some` sets, `None` removes.
    env: Vec<(OsString, Option<OsString>)>,
    cwd: Option<PathBuf>,
    log: Option<PathBuf>,
    wrapper: Option<Vec<OsString>>,
    storage: Storage,
    ready_within: Duration,
    /// Serve the webhook on a listener of its own (`--webhook.listen-address`).
    webhook_listener: bool,
    /// Path and query the `post` helpers send deliveries to.
    webhook_target: String,
    /// How to tell it is ready, given the main port, when `GET /-/ready`
    /// over plain HTTP cannot (TLS, basic auth).
    ready_probe: Option<ReadyProbe>,
}

/// A test's own readiness check: given the main listener's port, whether
/// the exporter answers.
pub type ReadyProbe = std::sync::Arc<dyn Fn(u16) -> bool + Send + Sync>;

impl Launch {
    /// One more argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Launch {
        self.args.push(arg.into());
        self
    }

    /// More arguments.
    pub fn args<A: Into<OsString>>(mut self, args: impl IntoIterator<Item = A>) -> Launch {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, name: &str, value: &str) -> Launch {
        self.env.push((name.into(), Some(value.into())));
        self
    }

    /// Sets every variable of `vars`.
    pub fn envs<K: AsRef<str>, V: AsRef<str>>(mut self, vars: &[(K, V)]) -> Launch {
        for (name, value) in vars {
            self = self.env(name.as_ref(), value.as_ref());
        }
        self
    }

    /// Removes an environment variable.
    pub fn env_remove(mut self, name: &str) -> Launch {
        self.env.push((name.into(), None));
        self
    }

    /// Runs the binary in `dir`.
    pub fn current_dir(mut self, dir: &Path) -> Launch {
        self.cwd = Some(dir.to_owned());
        self
    }

    /// Appends stdout and stderr to `path` (kept across restarts).
    pub fn log_to(mut self, path: &Path) -> Launch {
        self.log = Some(path.to_owned());
        self
    }

    /// Runs the binary under `program args…` (say `strace -f … --`): the
    /// exporter is then the wrapper's only child, and it gets the signals.
    /// Starting up under a wrapper may take longer (30 s, not 20).
    pub fn wrapped_in<A: Into<OsString>>(
        mut self,
        program: &Path,
        args: impl IntoIterator<Item = A>,
    ) -> Launch {
        let mut wrapper = vec![program.as_os_str().to_owned()];
        wrapper.extend(args.into_iter().map(Into::into));
        self.wrapper = Some(wrapper);
        self.ready_within = Duration::from_secs(30);
        self
    }

    /// The store at `path` (`--storage.path`), not a temporary one.
    pub fn storage(mut self, path: &Path) -> Launch {
        self.storage = Storage::At(path.to_owned());
        self
    }

    /// No `--storage.path`: the store goes where the binary puts it by
    /// default, `./data` under the working directory.
    pub fn default_storage(mut self) -> Launch {
        self.storage = Storage::Default;
        self
    }

    /// Serves the webhook on a free port of its own (`--webhook.listen-address`);
    /// `Exporter::webhook_url` then points there.
    pub fn webhook_listener(mut self) -> Launch {
        self.webhook_listener = true;
        self
    }

    /// Where the `post` helpers send deliveries: a path with its query,
    /// e.g. `/webhook/<token>` (default `/webhook`).
    pub fn webhook_target(mut self, target: &str) -> Launch {
        self.webhook_target = target.to_owned();
        self
    }

    /// Waits for `ready(port)` rather than a plain `GET /-/ready` (a main
    /// listener behind TLS or basic auth).
    pub fn ready_when(mut self, ready: impl Fn(u16) -> bool + Send + Sync + 'static) -> Launch {
        self.ready_probe = Some(std::sync::Arc::new(ready));
        self
    }

    /// Starts the exporter and waits until it is ready.
    pub fn start(self) -> Exporter {
        let tmp = tempfile::tempdir().expect("temp dir");
        let storage = self.storage_in(tmp.path());
        let mut exporter = Exporter {
            launch: self,
            process: None,
            port: 0,
            webhook_port: None,
            storage,
            _tmp: tmp,
        };
        exporter.spawn();
        exporter
    }

    /// Runs the binary expecting it to exit on its own (a start that must
    /// fail) within 10 s; its exit status and everything it wrote.
    pub fn run_until_exit(self) -> (ExitStatus, String) {
        let tmp = tempfile::tempdir().expect("temp dir");
        let log = tmp.path().join("out.log");
        let storage = self.storage_in(tmp.path());
        let mut process = self.log_to(&log).spawn(http::free_port(), None, &storage);
        let status = process.wait_exit(Duration::from_secs(10));
        (status, std::fs::read_to_string(&log).unwrap_or_default())
    }

    /// Where the store is, a temporary one going under `tmp`.
    fn storage_in(&self, tmp: &Path) -> PathBuf {
        match &self.storage {
            Storage::Temporary => tmp.join("data"),
            Storage::At(path) => path.clone(),
            Storage::Default => self
                .cwd
                .clone()
                .unwrap_or_else(|| std::env::current_dir().expect("cwd"))
                .join("data"),
        }
    }

    /// Spawns the binary listening on `port` (and the webhook alone on
    /// `webhook_port`), its store at `storage`.
    fn spawn(&self, port: u16, webhook_port: Option<u16>, storage: &Path) -> ChildGuard {
        let (program, wrapper_args) = match &self.wrapper {
            Some(wrapper) => (wrapper[0].clone(), &wrapper[1..]),
            None => (exporter_bin().into_os_string(), &[][..]),
        };
        let mut cmd = Command::new(&program);
        cmd.args(wrapper_args);
        if self.wrapper.is_some() {
            cmd.arg(exporter_bin());
        }
        cmd.arg(format!("--web.listen-address=127.0.0.1:{port}"));
        if let Some(webhook_port) = webhook_port {
            cmd.arg(format!("--webhook.listen-address=127.0.0.1:{webhook_port}"));
        }
        if !matches!(self.storage, Storage::Default) {
            cmd.arg(format!("--storage.path={}", storage.display()));
        }
        cmd.args(&self.args);
        for name in REMOVED_BY_DEFAULT {
            cmd.env_remove(name);
        }
        for (name, value) in &self.env {
            match value {
                Some(value) => cmd.env(name, value),
                None => cmd.env_remove(name),
            };
        }
        if let Some(dir) = &self.cwd {
            cmd.current_dir(dir);
        }
        cmd.stdin(Stdio::null());
        match &self.log {
            Some(path) => {
                let open = || {
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                        .expect("open the log file")
                };
                cmd.stdout(open()).stderr(open());
            }
            None if std::env::var_os("EXPORTER_LOGS").is_some() => {
                cmd.stdout(Stdio::null()).stderr(Stdio::inherit());
            }
            None => {
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        let guard = ChildGuard::spawn("the exporter", &mut cmd);
        match &self.log {
            Some(path) => guard.with_log(path.clone()),
            None => guard,
        }
    }
}

/// A running exporter process and its store.
pub struct Exporter {
    launch: Launch,
    /// `None` between a stop and a restart.
    process: Option<ChildGuard>,
    port: u16,
    /// With a webhook listener of its own, its port.
    webhook_port: Option<u16>,
    storage: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Exporter {
    /// How to start one: arguments, environment, directory, log, wrapper, store.
    pub fn builder() -> Launch {
        Launch {
            args: Vec::new(),
            env: Vec::new(),
            cwd: None,
            log: None,
            wrapper: None,
            storage: Storage::Temporary,
            ready_within: Duration::from_secs(20),
            webhook_listener: false,
            webhook_target: "/webhook".to_owned(),
            ready_probe: None,
        }
    }

    /// Starts the exporter with a fresh temporary store and `args`.
    pub fn start(args: &[&str]) -> Exporter {
        Self::builder().args(args).start()
    }

    fn spawn(&mut self) {
        self.port = http::free_port();
        self.webhook_port = self.launch.webhook_listener.then(http::free_port);
        let mut process = self
            .launch
            .spawn(self.port, self.webhook_port, &self.storage);
        match &self.launch.ready_probe {
            Some(ready) => {
                let port = self.port;
                process.wait_until("its own probe", self.launch.ready_within, || ready(port));
            }
            None => process.wait_ready(&self.url("/-/ready"), self.launch.ready_within),
        }
        self.process = Some(process);
    }

    fn process(&mut self) -> &mut ChildGuard {
        self.process.as_mut().expect("the exporter is not running")
    }

    /// The port it listens on (a new one after each restart).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory of its store.
    pub fn storage(&self) -> &Path {
        &self.storage
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    /// The port the webhook is served on: its own listener's, or the main one.
    pub fn webhook_port(&self) -> u16 {
        self.webhook_port.unwrap_or(self.port)
    }

    /// `path` on the listener that serves the webhook.
    pub fn webhook_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.webhook_port(), path)
    }

    /// Where the `post` helpers send deliveries (see `Launch::webhook_target`).
    pub fn delivery_url(&self) -> String {
        self.webhook_url(&self.launch.webhook_target)
    }

    /// The exporter's pid (under a wrapper, the wrapper's only child).
    pub fn pid(&self) -> u32 {
        let process = self.process.as_ref().expect("the exporter is not running");
        if self.launch.wrapper.is_none() {
            return process.id();
        }
        let children = children_of(process.id());
        assert_eq!(children.len(), 1, "the wrapper's children: {children:?}");
        children[0]
    }

    /// `kill -9`: no chance to flush anything.
    pub fn kill9(&mut self) {
        self.process().kill();
        self.process = None;
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        self.stop("TERM")
    }

    /// Sends `signal` (a name for `kill`, e.g. "INT") to the exporter and
    /// waits (at most 20 s) for the exit status (a wrapper's, under one).
    pub fn stop(&mut self, signal: &str) -> ExitStatus {
        send_signal(self.pid(), signal);
        let status = self.process().wait_exit(Duration::from_secs(20));
        self.process = None;
        status
    }

    /// Starts the binary again as before, on the same store (and a new port).
    pub fn restart(&mut self) {
        assert!(
            self.process.is_none(),
            "stop the exporter before restarting it"
        );
        self.spawn();
    }

    /// Posts `body` to the webhook with Load Impact's headers and `id` as
    /// `X-LoadImpact-ID`; the event header is taken from the body.
    pub fn post_id(&self, body: &Value, id: &str) -> Response {
        deliveries::post(&self.delivery_url(), body, id)
    }

    /// Posts `body` with a fresh `X-LoadImpact-ID`.
    pub fn post(&self, body: &Value) -> Response {
        self.post_id(body, &fresh_id())
    }

    /// Posts `body` with a fresh id and asserts the answer is 200
    /// `{"result":"<result>"}`.
    pub fn post_expect(&self, body: &Value, result: &str) {
        expect_result(&self.post(body), result, body);
    }

    /// Posts `body` with `id` and asserts the answer is 200 `{"result":"<result>"}`.
    pub fn post_id_expect(&self, body: &Value, id: &str, result: &str) {
        expect_result(&self.post_id(body, id), result, body);
    }

    /// The exposition text of `/metrics`.
    pub fn scrape(&self) -> String {
        http::get_ok(&self.url("/metrics")).body
    }

    /// The exposition as text, less the process's own telemetry: every line
    /// (HELP, TYPE and samples) of every `loadimpact_*` family that the
    /// webhooks produced.
    pub fn state_exposition(&self) -> Vec<String> {
        state_lines(&self.scrape())
    }

    /// Every sample of the scrape whose name starts with `loadimpact_`.
    pub fn samples(&self) -> Samples {
        self.samples_at("/metrics")
    }

    /// The `loadimpact_` samples of `path` (a custom `--web.telemetry-path`).
    pub fn samples_at(&self, path: &str) -> Samples {
        samples::parse_samples(&http::get_ok(&self.url(path)).body, "loadimpact_")
    }

    /// The value of one series now, or 0 when absent.
    pub fn sample(&self, series: &str) -> f64 {
        samples::sample(&self.samples(), series)
    }

    /// Waits (at most `timeout`) until `series` satisfies `ok`; its value.
    pub fn wait_sample(&self, series: &str, timeout: Duration, ok: impl Fn(f64) -> bool) -> f64 {
        let what = format!("{series} to reach the expected value");
        wait_for(&what, timeout, || {
            let value = self.sample(series);
            ok(value).then_some(value)
        })
    }

    /// `GET /api/v1/runs`, parsed.
    pub fn runs_api(&self) -> Value {
        http::get_ok(&self.url("/api/v1/runs")).json()
    }
}

/// Of an exposition text, every line (HELP, TYPE and samples) of every
/// `loadimpact_*` family but the process's own telemetry
/// (`samples::is_per_process`): the state.
pub fn state_lines(exposition: &str) -> Vec<String> {
    exposition
        .lines()
        .filter(|line| {
            let name = line
                .trim_start_matches("# HELP ")
                .trim_start_matches("# TYPE ");
            name.starts_with("loadimpact_") && !samples::is_per_process(name)
        })
        .map(str::to_owned)
        .collect()
}

/// The entry of `list` ("running" or "recent") of `/api/v1/runs` for run `id`.
pub fn api_run(runs: &Value, list: &str, id: u64) -> Option<Value> {
    runs[list]
        .as_array()
        .unwrap_or_else(|| panic!("/api/v1/runs has no `{list}` array: {runs}"))
        .iter()
        .find(|r| r["load_test_run_id"] == json!(id))
        .cloned()
}
