//! A real Redis for the replica tests: Debian's `redis-server` on a free
//! loopback port, in a temporary directory of its own, with the durability
//! the README asks for (`appendonly yes`, `appendfsync always`, no RDB
//! saves). It can be `kill -9`ed, stopped with SIGTERM, and started again on
//! the same port and directory, so that it replays its append-only file.
//! Killed when dropped. `Launch::on_redis` points an exporter at it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::exporter::Launch;
use super::http::free_port;
use super::process::ChildGuard;
use super::tools::{describe, require_tool};

/// A `redis-server` of the test's own.
pub struct Redis {
    /// `None` between a stop and `start_again`. First, so that it is
    /// killed before its directory goes.
    process: Option<ChildGuard>,
    port: u16,
    dir: tempfile::TempDir,
    /// More `redis-server` flags (`--requirepass`, `--replicaof`).
    extra: Vec<String>,
}

impl Redis {
    /// Starts `redis-server` on a free port and waits until it answers PING.
    pub fn start() -> Redis {
        Redis::start_with(&[])
    }

    /// [`Redis::start`] with more `redis-server` flags, kept for
    /// `start_again`.
    pub fn start_with(extra: &[&str]) -> Redis {
        let mut redis = Redis {
            process: None,
            port: free_port(),
            dir: tempfile::tempdir().expect("temp dir"),
            extra: extra.iter().map(|a| a.to_string()).collect(),
        };
        redis.spawn();
        redis
    }

    fn spawn(&mut self) {
        assert!(self.process.is_none(), "Redis is already running");
        let binary = require_tool("redis-server");
        let log = self.dir.path().join("redis.log");
        let open = || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .expect("open the Redis log")
        };
        let mut process = ChildGuard::spawn(
            "redis-server",
            Command::new(binary)
                .args(["--port", &self.port.to_string()])
                .args(["--bind", "127.0.0.1"])
                .arg("--dir")
                .arg(self.dir.path())
                .args(["--save", ""])
                .args(["--appendonly", "yes"])
                .args(["--appendfsync", "always"])
                .args(["--daemonize", "no"])
                .args(["--logfile", ""])
                .args(&self.extra)
                .stdin(Stdio::null())
                .stdout(open())
                .stderr(open()),
        )
        .with_log(log);
        let port = self.port;
        // While it replays its append-only file it answers `-LOADING`.
        process.wait_until("PING answers +PONG", Duration::from_secs(20), || ping(port));
        self.process = Some(process);
    }

    /// `redis://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its directory (the append-only file, its log `redis.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    /// Whether it runs (between `start`/`start_again` and a stop).
    pub fn is_running(&self) -> bool {
        self.process.is_some()
    }

    /// Whether it answers PING now.
    pub fn answers(&self) -> bool {
        ping(self.port)
    }

    /// `kill -9`: nothing flushed that was not already.
    pub fn kill9(&mut self) {
        let mut process = self.process.take().expect("Redis is not running");
        process.kill();
    }

    /// SIGTERM, and waits (at most 20 s) for it to exit.
    pub fn stop(&mut self) {
        let mut process = self.process.take().expect("Redis is not running");
        let status = process.stop("TERM", Duration::from_secs(20));
        assert!(
            status.success(),
            "redis-server exit status on SIGTERM: {status}\n{}",
            self.log()
        );
    }

    /// Starts it again on the same port and directory (it replays its
    /// append-only file) and waits until it answers PING.
    pub fn start_again(&mut self) {
        self.spawn();
    }

    /// Runs `redis-cli -p PORT args…`, which must succeed; its stdout,
    /// trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        let output = Command::new(require_tool("redis-cli"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("run redis-cli");
        assert!(
            output.status.success(),
            "redis-cli {}: {}",
            args.join(" "),
            describe(&output)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// `redis-cli … args` read as an integer (`(nil)` or empty as 0).
    pub fn cli_int(&self, args: &[&str]) -> u64 {
        let out = self.cli(args);
        if out.is_empty() || out == "(nil)" {
            return 0;
        }
        out.parse()
            .unwrap_or_else(|_| panic!("redis-cli {}: not an integer: {out:?}", args.join(" ")))
    }
}

/// A raw `PING` on `port`: true when the answer is `+PONG`, or `-NOAUTH`
/// from a Redis that wants a password (it answers all the same).
pub fn ping(port: u16) -> bool {
    let Ok(mut stream) =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500))
    else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut answer = [0u8; 7];
    let mut got = 0;
    while got < answer.len() {
        match stream.read(&mut answer[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    &answer[..got] == b"+PONG\r\n" || answer[..got].starts_with(b"-NOAUTH")
}

/// The Redis flags of a replica.
impl Launch {
    /// A replica on `redis` with the key prefix `prefix` (give each test
    /// its own), a 2 s lease so that a takeover after `kill -9` is quick.
    pub fn on_redis(self, redis: &Redis, prefix: &str) -> Launch {
        self.args([
            "--storage.backend=redis".to_owned(),
            format!("--storage.redis-url={}", redis.url()),
            format!("--storage.redis-prefix={prefix}"),
            "--storage.redis-lease=2s".to_owned(),
        ])
    }
}
