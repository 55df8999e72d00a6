//! The shared log's commands on Redis, and nothing else: the keys, the
//! append script, the stream reads, the lease, the snapshot and the trim.
//! Every other part of the replica speaks to Redis through [`RedisLog`].
//!
//! Keys, all under the prefix (`--storage.redis-prefix`):
//! - `<prefix>:log`: the stream of entries; each has `o` (its ordinal, from
//!   1 without a gap), `n` (the appending request's nonce) and `r` (the
//!   input as JSON);
//! - `<prefix>:seq`: the last ordinal given;
//! - `<prefix>:lease`: the replica id of the lease holder, with a time to live;
//! - `<prefix>:snapshot`: the whole state at a position, as JSON;
//! - `<prefix>:replicas`: replica id -> `ordinal stream-id unix-ms` of its
//!   last report;
//! - `<prefix>:rules`: the rule settings of the first replica, which every
//!   other must share.

use crate::store::Position;
use redis::aio::ConnectionManager;
use redis::streams::StreamReadReply;
use redis::{RedisResult, Script, Value};
use std::time::Duration;

/// Gives each entry its ordinal and appends it, in one atomic step, so that
/// ordinals follow the stream's order without a gap: a reader that finds a
/// gap knows it missed entries (trimmed while it was away).
const APPEND: &str = r"
local ids = {}
for i = 1, #ARGV, 2 do
  local n = redis.call('INCR', KEYS[2])
  ids[#ids + 1] = redis.call('XADD', KEYS[1], '*', 'o', n, 'n', ARGV[i], 'r', ARGV[i + 1])
end
return ids
";

/// Takes the lease, or renews it when this replica holds it.
const LEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
return 0
";

/// Gives the lease up, if this replica holds it.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Why an append was not confirmed.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// Nothing was appended, or Redis did not say.
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    /// Appended on the primary, but fewer Redis replicas than
    /// `--storage.redis-wait-replicas` have it within a second.
    #[error("appended, but only {acknowledged} of the {wanted} Redis replicas asked for (--storage.redis-wait-replicas) have it")]
    NotReplicated { acknowledged: i64, wanted: u32 },
}

/// One entry as read from the stream.
#[derive(Debug, Clone)]
pub struct RawEntry {
    pub position: Position,
    pub nonce: String,
    pub record: Vec<u8>,
}

/// A replica's last report of where it stands.
#[derive(Debug, Clone, Copy)]
pub struct Report {
    pub position: Position,
    pub at_ms: i64,
}

/// The Redis side of the log. Cheap to clone (one multiplexed connection).
#[derive(Clone)]
pub struct RedisLog {
    conn: ConnectionManager,
    prefix: String,
    wait_replicas: u32,
    /// The scripts, hashed once (each call sends EVALSHA).
    scripts: std::sync::Arc<Scripts>,
}

struct Scripts {
    append: Script,
    lease: Script,
    release: Script,
}

/// A connection that reconnects by itself (lazily: the first command
/// connects), each command giving up after `response_timeout`. The reader
/// has one of its own: a blocking read holds up every command behind it.
pub fn connection(
    client: &redis::Client,
    response_timeout: Duration,
) -> RedisResult<ConnectionManager> {
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_response_timeout(Some(response_timeout))
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(1));
    ConnectionManager::new_lazy_with_config(client.clone(), config)
}

fn key(prefix: &str, name: &str) -> String {
    format!("{prefix}:{name}")
}

fn bulk(value: &Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(bytes) => Some(bytes.clone()),
        Value::SimpleString(s) => Some(s.clone().into_bytes()),
        Value::Int(n) => Some(n.to_string().into_bytes()),
        _ => None,
    }
}

impl RedisLog {
    /// A connection to `client` that reconnects by itself; each command gives
    /// up after `response_timeout`.
    pub fn connect(
        client: &redis::Client,
        prefix: &str,
        wait_replicas: u32,
        response_timeout: Duration,
    ) -> RedisResult<RedisLog> {
        Ok(RedisLog {
            conn: connection(client, response_timeout)?,
            prefix: prefix.to_owned(),
            wait_replicas,
            scripts: std::sync::Arc::new(Scripts {
                append: Script::new(APPEND),
                lease: Script::new(LEASE),
                release: Script::new(RELEASE),
            }),
        })
    }

    fn key(&self, name: &str) -> String {
        key(&self.prefix, name)
    }

    /// Appends `(nonce, record)` pairs, in order, and returns once Redis has
    /// them (and, with `--storage.redis-wait-replicas`, its replicas too).
    pub async fn append(&self, entries: &[(String, Vec<u8>)]) -> Result<(), AppendError> {
        let mut conn = self.conn.clone();
        let mut invocation = self.scripts.append.key(self.key("log"));
        invocation.key(self.key("seq"));
        for (nonce, record) in entries {
            invocation.arg(nonce).arg(record.as_slice());
        }
        let _: Vec<String> = invocation.invoke_async(&mut conn).await?;
        if self.wait_replicas > 0 {
            let acknowledged: i64 = redis::cmd("WAIT")
                .arg(self.wait_replicas)
                .arg(1000)
                .query_async(&mut conn)
                .await?;
            if acknowledged < i64::from(self.wait_replicas) {
                return Err(AppendError::NotReplicated {
                    acknowledged,
                    wanted: self.wait_replicas,
                });
            }
        }
        Ok(())
    }

    /// Up to `count` entries after `after`, waiting up to `block` for one.
    pub async fn read_after(
        conn: &mut ConnectionManager,
        prefix: &str,
        after: &Position,
        count: usize,
        block: Duration,
    ) -> RedisResult<Vec<RawEntry>> {
        let reply: Option<StreamReadReply> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(u64::try_from(block.as_millis()).unwrap_or(u64::MAX))
            .arg("STREAMS")
            .arg(key(prefix, "log"))
            .arg(after.stream_id())
            .query_async(conn)
            .await?;
        let mut out = Vec::new();
        for stream in reply.map(|r| r.keys).unwrap_or_default() {
            for entry in stream.ids {
                let field = |name: &str| entry.map.get(name).and_then(bulk);
                let ordinal = field("o")
                    .and_then(|o| String::from_utf8(o).ok())
                    .and_then(|o| o.parse().ok());
                let position = ordinal.and_then(|o| Position::parse(o, &entry.id));
                let (Some(position), Some(record)) = (position, field("r")) else {
                    return Err(redis::RedisError::from((
                        redis::ErrorKind::Parse,
                        "a log entry without its ordinal or record",
                        entry.id.clone(),
                    )));
                };
                let nonce = field("n")
                    .and_then(|n| String::from_utf8(n).ok())
                    .unwrap_or_default();
                out.push(RawEntry {
                    position,
                    nonce,
                    record,
                });
            }
        }
        Ok(out)
    }

    /// The last ordinal given (0 for an empty log).
    pub async fn last_ordinal(&self) -> RedisResult<u64> {
        let mut conn = self.conn.clone();
        let n: Option<u64> = redis::cmd("GET")
            .arg(self.key("seq"))
            .query_async(&mut conn)
            .await?;
        Ok(n.unwrap_or(0))
    }

    /// Takes or renews the lease for `ttl`; true while this replica holds it.
    pub async fn lease(&self, replica: &str, ttl: Duration) -> RedisResult<bool> {
        let mut conn = self.conn.clone();
        let held: i64 = self
            .scripts
            .lease
            .key(self.key("lease"))
            .arg(replica)
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
            .invoke_async(&mut conn)
            .await?;
        Ok(held == 1)
    }

    /// Gives the lease up, if this replica holds it (a clean stop).
    pub async fn release(&self, replica: &str) -> RedisResult<()> {
        let mut conn = self.conn.clone();
        let _: i64 = self
            .scripts
            .release
            .key(self.key("lease"))
            .arg(replica)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    pub async fn put_snapshot(&self, snapshot: &[u8]) -> RedisResult<()> {
        let mut conn = self.conn.clone();
        redis::cmd("SET")
            .arg(self.key("snapshot"))
            .arg(snapshot)
            .query_async(&mut conn)
            .await
    }

    pub async fn snapshot(&self) -> RedisResult<Option<Vec<u8>>> {
        let mut conn = self.conn.clone();
        redis::cmd("GET")
            .arg(self.key("snapshot"))
            .query_async(&mut conn)
            .await
    }

    /// Records where `replica` stands, at `now_ms`.
    pub async fn report(&self, replica: &str, position: &Position, now_ms: i64) -> RedisResult<()> {
        let mut conn = self.conn.clone();
        let value = format!("{} {} {now_ms}", position.ordinal, position.stream_id());
        redis::cmd("HSET")
            .arg(self.key("replicas"))
            .arg(replica)
            .arg(value)
            .query_async(&mut conn)
            .await
    }

    /// Every replica's last report (unreadable ones left out).
    pub async fn reports(&self) -> RedisResult<Vec<(String, Report)>> {
        let mut conn = self.conn.clone();
        let all: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(self.key("replicas"))
            .query_async(&mut conn)
            .await?;
        Ok(all
            .into_iter()
            .filter_map(|(replica, value)| {
                let mut parts = value.split(' ');
                let ordinal = parts.next()?.parse().ok()?;
                let position = Position::parse(ordinal, parts.next()?)?;
                let at_ms = parts.next()?.parse().ok()?;
                Some((replica, Report { position, at_ms }))
            })
            .collect())
    }

    /// Forgets the reports of replicas gone for good.
    pub async fn forget(&self, replicas: &[String]) -> RedisResult<()> {
        if replicas.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        redis::cmd("HDEL")
            .arg(self.key("replicas"))
            .arg(replicas)
            .query_async(&mut conn)
            .await
    }

    /// Deletes every entry before `keep` (which stays).
    pub async fn trim_before(&self, keep: &Position) -> RedisResult<u64> {
        let mut conn = self.conn.clone();
        redis::cmd("XTRIM")
            .arg(self.key("log"))
            .arg("MINID")
            .arg(keep.stream_id())
            .query_async(&mut conn)
            .await
    }

    /// Makes sure every replica applies the same rules: the first replica
    /// writes `rules`; the others must find the same. Returns what is stored.
    pub async fn agree_on_rules(&self, rules: &str) -> RedisResult<String> {
        let mut conn = self.conn.clone();
        let _: Option<String> = redis::cmd("SET")
            .arg(self.key("rules"))
            .arg(rules)
            .arg("NX")
            .query_async(&mut conn)
            .await?;
        let stored: Option<String> = redis::cmd("GET")
            .arg(self.key("rules"))
            .query_async(&mut conn)
            .await?;
        Ok(stored.unwrap_or_default())
    }
}
