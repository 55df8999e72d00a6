//! Basic auth against `basic_auth_users` (user name to bcrypt hash), as
//! exporter-toolkit checks it: a bcrypt check costs tens of milliseconds, so
//! verified credentials are remembered (a bounded set keyed by a SHA-256 of
//! the user, hash and password), one check runs at a time, and an unknown
//! user is checked against a dummy hash of the same cost so that the answer's
//! timing does not tell which users exist.

use base64::Engine as _;
use bcrypt::HashParts;
use hyper::header::AUTHORIZATION;
use hyper::HeaderMap;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use super::lock;

/// How many verified credentials are remembered.
const CACHE_SIZE: usize = 256;

/// Checks that `hash` is a bcrypt hash this exporter verifies: `$2y$` (as
/// `htpasswd -B` writes), `$2b$` or `$2a$`. The error never quotes it: a
/// plain password put there by mistake must not reach the logs.
pub(super) fn check_hash(hash: &str) -> Result<u32, String> {
    if hash.starts_with("$2x$") {
        return Err("$2x$ bcrypt hashes (of the old crypt_blowfish bug) are not supported: use $2y$, $2b$ or $2a$".to_owned());
    }
    if !(hash.starts_with("$2y$") || hash.starts_with("$2b$") || hash.starts_with("$2a$")) {
        return Err(
            "the password is not a bcrypt hash ($2y$, $2b$ or $2a$, as `htpasswd -nbB` writes)"
                .to_owned(),
        );
    }
    let cost = HashParts::from_str(hash)
        .map(|parts| parts.get_cost())
        .map_err(|e| format!("the bcrypt hash is malformed: {e}"))?;
    if !(4..=31).contains(&cost) {
        return Err(format!("the bcrypt cost {cost} is not between 4 and 31"));
    }
    Ok(cost)
}

/// The user and password of a request's `Authorization: Basic` header, as bytes.
pub(super) struct Credentials {
    user: Vec<u8>,
    password: Vec<u8>,
}

impl Credentials {
    /// The credentials of `Authorization: Basic <base64 of user:password>`,
    /// if the header is there and well formed.
    pub(super) fn from_headers(headers: &HeaderMap) -> Option<Credentials> {
        let value = headers.get(AUTHORIZATION)?.as_bytes();
        let (scheme, encoded) = value.split_at_checked(6)?;
        if !scheme.eq_ignore_ascii_case(b"Basic ") {
            return None;
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .ok()?;
        let mut parts = decoded.splitn(2, |&b| b == b':');
        let (user, password) = (parts.next()?, parts.next()?);
        Some(Credentials {
            user: user.to_vec(),
            password: password.to_vec(),
        })
    }
}

/// Credentials verified once, remembered by digest (never in clear), the
/// oldest forgotten first. Only successes are kept: a stream of wrong
/// passwords cannot push the good ones out.
#[derive(Debug, Default)]
pub(super) struct AuthCache {
    entries: Mutex<Remembered>,
}

/// The digests, and the order they came in.
#[derive(Debug, Default)]
struct Remembered {
    set: HashSet<[u8; 32]>,
    order: VecDeque<[u8; 32]>,
}

impl AuthCache {
    fn contains(&self, key: &[u8; 32]) -> bool {
        lock(&self.entries).set.contains(key)
    }

    fn insert(&self, key: [u8; 32]) {
        let mut entries = lock(&self.entries);
        if !entries.set.insert(key) {
            return;
        }
        entries.order.push_back(key);
        while entries.order.len() > CACHE_SIZE {
            if let Some(oldest) = entries.order.pop_front() {
                entries.set.remove(&oldest);
            }
        }
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        lock(&self.entries).set.len()
    }
}

/// The users of one version of the file.
pub(super) struct BasicAuth {
    users: HashMap<Vec<u8>, String>,
    /// Checked for an unknown user, so that it costs what a known one does:
    /// a hash of the highest cost among the users, made on first need (a
    /// bcrypt run of that cost, kept off the start and every reload).
    dummy: std::sync::OnceLock<String>,
    /// The cost of `dummy`.
    dummy_cost: u32,
    cache: Arc<AuthCache>,
    /// The turn to run a bcrypt check: one at a time, as exporter-toolkit
    /// does, since they are CPU-bound (see [`BasicAuth::turn`]).
    turns: Arc<tokio::sync::Semaphore>,
    /// A place in the queue for a turn: [`MAX_WAITING`] of them.
    queue: tokio::sync::Semaphore,
}

/// At most this many requests wait for a bcrypt check; more are refused at
/// once (429), so that a flood of wrong passwords holds neither memory nor
/// the blocking threads that the listeners also need.
pub(super) const MAX_WAITING: usize = 32;

/// A request's turn to run a bcrypt check, held while it runs.
pub(super) struct Turn {
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl BasicAuth {
    /// `users` must have been checked by [`check_hash`].
    pub(super) fn new(users: &BTreeMap<String, String>, cache: Arc<AuthCache>) -> BasicAuth {
        let cost = users
            .values()
            .filter_map(|hash| check_hash(hash).ok())
            .max()
            .unwrap_or(bcrypt::DEFAULT_COST);
        BasicAuth {
            users: users
                .iter()
                .map(|(user, hash)| (user.as_bytes().to_vec(), hash.clone()))
                .collect(),
            dummy: std::sync::OnceLock::new(),
            dummy_cost: cost,
            cache,
            turns: Arc::new(tokio::sync::Semaphore::new(1)),
            queue: tokio::sync::Semaphore::new(MAX_WAITING),
        }
    }

    #[cfg(test)]
    pub(super) fn waiting(&self) -> usize {
        MAX_WAITING - self.queue.available_permits()
    }

    /// Waits for the turn to run one bcrypt check; `None` when
    /// [`MAX_WAITING`] requests already wait. The place in the queue is
    /// given back once the turn comes, or when the request is dropped while
    /// it waits (its client gone).
    pub(super) async fn turn(&self) -> Option<Turn> {
        let _queued = self.queue.try_acquire().ok()?;
        // The semaphore is never closed.
        let permit = self.turns.clone().acquire_owned().await.ok()?;
        Some(Turn { _permit: permit })
    }

    pub(super) fn users(&self) -> usize {
        self.users.len()
    }

    /// The hash `credentials` are checked against, and whether the user exists.
    fn hash_for(&self, credentials: &Credentials) -> (&str, bool) {
        match self.users.get(&credentials.user) {
            Some(hash) => (hash, true),
            None => (
                self.dummy.get_or_init(|| dummy_hash(self.dummy_cost)),
                false,
            ),
        }
    }

    fn cache_key(credentials: &Credentials, hash: &str) -> [u8; 32] {
        let mut hasher = Sha256::new();
        for part in [
            credentials.user.as_slice(),
            hash.as_bytes(),
            credentials.password.as_slice(),
        ] {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part);
        }
        hasher.finalize().into()
    }

    /// Whether these credentials were verified before (no bcrypt check, and
    /// for an unknown user not the dummy hash either: this runs on the
    /// runtime's threads).
    pub(super) fn cached(&self, credentials: &Credentials) -> bool {
        self.users
            .get(&credentials.user)
            .is_some_and(|hash| self.cache.contains(&Self::cache_key(credentials, hash)))
    }

    /// Whether the credentials are a user's with the right password; runs a
    /// bcrypt check unless they are remembered. Blocking: call it on a
    /// blocking thread, holding a [`BasicAuth::turn`].
    pub(super) fn check(&self, credentials: &Credentials) -> bool {
        let (hash, known) = self.hash_for(credentials);
        let key = Self::cache_key(credentials, hash);
        if known && self.cache.contains(&key) {
            return true;
        }
        let verified = bcrypt::verify(&credentials.password, hash).unwrap_or(false);
        let ok = known && verified;
        if ok {
            self.cache.insert(key);
        }
        ok
    }
}

/// A bcrypt hash of a fixed password nobody sends, with the given cost (one
/// bcrypt run to make it).
fn dummy_hash(cost: u32) -> String {
    const SALT: [u8; 16] = *b"loadimpact-dummy";
    bcrypt::hash_with_salt("not a password of any user", cost, SALT)
        .map(|parts| parts.format_for_version(bcrypt::Version::TwoB))
        // Cost out of range cannot come from a checked hash; fall back to a
        // fixed hash (of another password) of cost 10.
        .unwrap_or_else(|_| {
            "$2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi".to_owned()
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    /// `htpasswd -nbB -C 4 alice secret` (the `$2y$` prefix htpasswd writes).
    const ALICE_2Y: &str = "$2y$04$E0/GAwhGAnB/nCaLNV.k4uvLxl3aCZVnXDciecV5E5p3V8nWqhjOS";

    fn headers(user: &str, password: &str) -> HeaderMap {
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let mut headers = HeaderMap::new();
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {encoded}")).expect("header"),
        );
        headers
    }

    fn credentials(user: &str, password: &str) -> Credentials {
        Credentials::from_headers(&headers(user, password)).expect("credentials")
    }

    fn users(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(u, h)| (u.to_string(), h.to_string()))
            .collect()
    }

    #[test]
    fn the_three_hash_prefixes_are_accepted_and_others_refused() {
        let b = bcrypt::hash_with_salt("secret", 4, [7; 16]).expect("hash");
        for version in [
            bcrypt::Version::TwoY,
            bcrypt::Version::TwoB,
            bcrypt::Version::TwoA,
        ] {
            let hash = b.format_for_version(version);
            assert_eq!(check_hash(&hash), Ok(4), "{hash}");
            let auth = BasicAuth::new(&users(&[("u", &hash)]), Arc::default());
            assert!(auth.check(&credentials("u", "secret")), "{hash}");
            assert!(!auth.check(&credentials("u", "wrong")), "{hash}");
        }
        let two_x = b.format_for_version(bcrypt::Version::TwoX);
        assert!(check_hash(&two_x).unwrap_err().contains("$2x$"));
        let plain = check_hash("secret").unwrap_err();
        assert!(!plain.contains("secret"), "{plain}");
        assert!(check_hash("$2y$04$short").is_err());
        assert!(
            check_hash("$2y$99$w5mnNC1lATb9f5PH/nJEbuaZRjvqXgFITy1pOQIpFTt5BWfnwxNku").is_err()
        );
    }

    #[test]
    fn an_htpasswd_hash_is_verified() {
        let auth = BasicAuth::new(&users(&[("alice", ALICE_2Y)]), Arc::default());
        assert!(auth.check(&credentials("alice", "secret")));
        assert!(!auth.check(&credentials("alice", "Secret")));
        assert!(!auth.check(&credentials("bob", "secret")));
    }

    #[test]
    fn only_verified_credentials_are_remembered_and_a_new_hash_is_not_fooled() {
        let cache = Arc::new(AuthCache::default());
        let auth = BasicAuth::new(&users(&[("alice", ALICE_2Y)]), cache.clone());
        let good = credentials("alice", "secret");
        assert!(!auth.cached(&good));
        assert!(auth.check(&good));
        assert!(auth.cached(&good));
        assert_eq!(cache.len(), 1);
        assert!(!auth.check(&credentials("alice", "wrong")));
        assert!(!auth.check(&credentials("nobody", "secret")));
        assert_eq!(cache.len(), 1, "failures are not remembered");

        // Another file version with a new hash for alice: the old password's
        // entry is keyed by the old hash and does not apply.
        let other = bcrypt::hash_with_salt("changed", 4, [1; 16])
            .expect("hash")
            .format_for_version(bcrypt::Version::TwoB);
        let auth = BasicAuth::new(&users(&[("alice", &other)]), cache.clone());
        assert!(!auth.cached(&good));
        assert!(!auth.check(&good));
        assert!(auth.check(&credentials("alice", "changed")));
    }

    #[test]
    fn the_cache_is_bounded_oldest_first() {
        let cache = AuthCache::default();
        for i in 0..(CACHE_SIZE + 10) {
            let mut key = [0u8; 32];
            key[..8].copy_from_slice(&(i as u64).to_be_bytes());
            cache.insert(key);
        }
        assert_eq!(cache.len(), CACHE_SIZE);
        assert!(!cache.contains(&[0u8; 32]));
    }

    #[test]
    fn authorization_headers_are_read_like_go_does() {
        let c = credentials("al:ice", "pa:ss");
        assert_eq!(c.user, b"al");
        assert_eq!(c.password, b"ice:pa:ss");
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_static("basic YTpi"));
        let c = Credentials::from_headers(&h).expect("lower-case scheme");
        assert_eq!(
            (c.user.as_slice(), c.password.as_slice()),
            (&b"a"[..], &b"b"[..])
        );
        for bad in ["Bearer YTpi", "Basic", "Basic !!!", "Basic YWI=", ""] {
            let mut h = HeaderMap::new();
            h.insert(AUTHORIZATION, HeaderValue::from_static(bad));
            assert!(Credentials::from_headers(&h).is_none(), "{bad:?}");
        }
        assert!(Credentials::from_headers(&HeaderMap::new()).is_none());
    }

    #[test]
    fn an_unknown_user_costs_a_bcrypt_check_of_the_users_cost() {
        let hash = bcrypt::hash_with_salt("x", 6, [3; 16])
            .expect("hash")
            .format_for_version(bcrypt::Version::TwoY);
        let auth = BasicAuth::new(
            &users(&[("alice", ALICE_2Y), ("bob", &hash)]),
            Arc::default(),
        );
        // Not made until an unknown user comes: a start or a reload runs no
        // bcrypt of that cost.
        assert!(auth.dummy.get().is_none());
        let stranger = Credentials {
            user: b"mallory".to_vec(),
            password: b"x".to_vec(),
        };
        // Nor by the cache's look-up, which runs on the runtime's threads.
        assert!(!auth.cached(&stranger));
        assert!(auth.dummy.get().is_none());
        assert!(!auth.check(&stranger));
        assert_eq!(auth.dummy.get().map(|d| check_hash(d)), Some(Ok(6)));
    }
}
