//! Who may post to the webhook: the shared secrets and the address ranges.
//!
//! Load Impact and Grafana Cloud k6 only let a user paste a URL, so the
//! secret travels in it (`/webhook/<token>` or `?token=`). [`Tokens`] holds
//! the valid ones, read from a file (one a line, so that two are valid while
//! one is rotated; re-read on SIGHUP and when the file changes, as a mounted
//! Secret does) or from an environment variable, never from a flag that `ps`
//! would show. Only SHA-256 digests are kept, compared in constant time.
//!
//! [`Allowlist`] holds `--webhook.allowed-cidrs`, with `X-Forwarded-For`
//! believed only from `--web.trusted-proxies`.

use ipnet::IpNet;
use sha2::{Digest, Sha256};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use subtle::ConstantTimeEq;

/// The environment variable that may hold the one webhook token.
pub const TOKEN_ENV: &str = "LOADIMPACT_EXPORTER_WEBHOOK_TOKEN";

/// Why the tokens could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("reading the token file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin} holds no token")]
    Empty { origin: String },
    /// The line is named, never the token.
    #[error(
        "{origin}, token {index}: only letters, digits and - . _ ~ may appear in a URL unescaped"
    )]
    NotUrlSafe { origin: String, index: usize },
}

/// Where the tokens come from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Origin {
    /// None configured: the webhook is open.
    None,
    File(PathBuf),
    Env,
}

/// The tokens a delivery may present, as digests.
#[derive(Debug)]
pub struct Tokens {
    origin: Origin,
    /// SHA-256 of each valid token, and of the whole file (to tell a change).
    current: RwLock<(Vec<[u8; 32]>, [u8; 32])>,
    /// How many lines of the file are the shipped placeholder, never accepted.
    placeholders: std::sync::atomic::AtomicUsize,
}

/// How the placeholder token that the manifests ship starts: it is public,
/// so it is never accepted (a deployment that still has it takes no
/// delivery, rather than any).
pub const PLACEHOLDER_PREFIX: &str = "REPLACE-ME";

/// The tokens of a file: the valid ones, and how many placeholders it held.
#[derive(Debug)]
struct Parsed {
    tokens: Vec<[u8; 32]>,
    placeholders: usize,
}

/// What a reload found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    Unchanged,
    /// The tokens changed; this many are valid now.
    Changed(usize),
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The tokens of `text`: one a line, blank lines and `#` comments skipped,
/// surrounding blanks trimmed, placeholders ([`PLACEHOLDER_PREFIX`]) set
/// aside.
fn parse_tokens(text: &str, origin: &str) -> Result<Parsed, TokenError> {
    let mut tokens = Vec::new();
    let mut placeholders = 0;
    for line in text.lines() {
        let token = line.trim();
        if token.is_empty() || token.starts_with('#') {
            continue;
        }
        let prefix = token.get(..PLACEHOLDER_PREFIX.len());
        if prefix.is_some_and(|p| p.eq_ignore_ascii_case(PLACEHOLDER_PREFIX)) {
            placeholders += 1;
            continue;
        }
        let url_safe = token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
        if !url_safe {
            return Err(TokenError::NotUrlSafe {
                origin: origin.to_owned(),
                index: tokens.len() + 1,
            });
        }
        tokens.push(digest(token.as_bytes()));
    }
    if tokens.is_empty() && placeholders == 0 {
        return Err(TokenError::Empty {
            origin: origin.to_owned(),
        });
    }
    Ok(Parsed {
        tokens,
        placeholders,
    })
}

impl Tokens {
    /// The tokens of `file` if given, else of [`TOKEN_ENV`] if set, else none
    /// (an open webhook).
    pub fn load(file: Option<&Path>) -> Result<Tokens, TokenError> {
        let (origin, text) = match file {
            Some(path) => (Origin::File(path.to_owned()), read(path)?),
            // Set but empty (an unset variable in a compose file, an empty
            // Secret key) is an error, not an open webhook.
            None => match std::env::var_os(TOKEN_ENV) {
                Some(value) => (Origin::Env, value.to_string_lossy().into_owned()),
                None => (Origin::None, String::new()),
            },
        };
        let parsed = match &origin {
            Origin::None => Parsed {
                tokens: Vec::new(),
                placeholders: 0,
            },
            _ => parse_tokens(&text, &describe(&origin))?,
        };
        Ok(Tokens {
            origin,
            current: RwLock::new((parsed.tokens, digest(text.as_bytes()))),
            placeholders: parsed.placeholders.into(),
        })
    }

    /// How many placeholder tokens the file holds (none of them accepted).
    pub fn placeholders(&self) -> usize {
        self.placeholders.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// No token configured: anyone may post.
    pub fn is_open(&self) -> bool {
        self.origin == Origin::None
    }

    /// Where the tokens come from, for a log line.
    pub fn origin(&self) -> String {
        describe(&self.origin)
    }

    /// How many tokens are valid now.
    pub fn count(&self) -> usize {
        self.current.read().map_or(0, |c| c.0.len())
    }

    /// Whether `presented` is one of the tokens (always, for an open
    /// webhook). Every token is compared, each in constant time, so the
    /// time taken says nothing of how close a guess came.
    pub fn permits(&self, presented: Option<&str>) -> bool {
        if self.is_open() {
            return true;
        }
        let Some(presented) = presented else {
            return false;
        };
        let presented = digest(presented.as_bytes());
        let Ok(current) = self.current.read() else {
            return false;
        };
        let mut found = subtle::Choice::from(0);
        for token in &current.0 {
            found |= token.ct_eq(&presented);
        }
        found.into()
    }

    /// Reads the file again. An unreadable or empty file changes nothing:
    /// the tokens in force stay until a good file replaces them.
    pub fn reload(&self) -> Result<Reload, TokenError> {
        let Origin::File(path) = &self.origin else {
            return Ok(Reload::Unchanged);
        };
        let text = read(path)?;
        let whole = digest(text.as_bytes());
        if self.current.read().is_ok_and(|c| c.1 == whole) {
            return Ok(Reload::Unchanged);
        }
        let parsed = parse_tokens(&text, &describe(&self.origin))?;
        let count = parsed.tokens.len();
        if let Ok(mut current) = self.current.write() {
            *current = (parsed.tokens, whole);
        }
        self.placeholders
            .store(parsed.placeholders, std::sync::atomic::Ordering::Relaxed);
        Ok(Reload::Changed(count))
    }
}

fn read(path: &Path) -> Result<String, TokenError> {
    std::fs::read_to_string(path).map_err(|source| TokenError::Read {
        path: path.to_owned(),
        source,
    })
}

fn describe(origin: &Origin) -> String {
    match origin {
        Origin::None => "no token".to_owned(),
        Origin::File(path) => format!("the token file {}", path.display()),
        Origin::Env => format!("the variable {TOKEN_ENV}"),
    }
}

/// The address ranges that may post, and the proxies whose
/// `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowlist {
    /// Empty: every address may post.
    pub allowed: Vec<IpNet>,
    pub trusted_proxies: Vec<IpNet>,
}

fn within(nets: &[IpNet], ip: IpAddr) -> bool {
    nets.iter().any(|net| net.contains(&ip))
}

/// An address of `X-Forwarded-For`: bare, or with a port, or bracketed IPv6.
fn forwarded_address(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip);
    }
    entry
        .parse::<std::net::SocketAddr>()
        .ok()
        .map(|addr| addr.ip())
}

impl Allowlist {
    /// The client a request came from: the peer, unless the peer is a
    /// trusted proxy; then the right-most address of `X-Forwarded-For`
    /// that is not a trusted proxy (the left-most when all are). `None`
    /// when that header cannot be read.
    pub fn client(&self, peer: IpAddr, forwarded_for: &[&str]) -> Option<IpAddr> {
        let peer = peer.to_canonical();
        if !within(&self.trusted_proxies, peer) || forwarded_for.is_empty() {
            return Some(peer);
        }
        let mut hops = Vec::new();
        for value in forwarded_for {
            for entry in value.split(',') {
                hops.push(forwarded_address(entry)?.to_canonical());
            }
        }
        let first = hops.first().copied();
        hops.into_iter()
            .rev()
            .find(|ip| !within(&self.trusted_proxies, *ip))
            .or(first)
    }

    /// Whether a request from `peer`, with these `X-Forwarded-For` values,
    /// may post.
    pub fn permits(&self, peer: IpAddr, forwarded_for: &[&str]) -> bool {
        if self.allowed.is_empty() {
            return true;
        }
        self.client(peer, forwarded_for)
            .is_some_and(|ip| within(&self.allowed, ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().expect("net")).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn tokens_are_one_a_line_and_any_of_them_is_permitted() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("tokens");
        std::fs::write(
            &file,
            "# rotated on Monday\n  old-token-1234567  \n\nnew_token.89~ABC\n",
        )
        .expect("write");
        let tokens = Tokens::load(Some(&file)).expect("load");
        assert!(!tokens.is_open());
        assert_eq!(tokens.count(), 2);
        assert!(tokens.permits(Some("old-token-1234567")));
        assert!(tokens.permits(Some("new_token.89~ABC")));
        assert!(!tokens.permits(Some("old-token-123456")));
        assert!(!tokens.permits(Some("")));
        assert!(!tokens.permits(None));
    }

    #[test]
    fn a_reload_takes_a_changed_file_and_keeps_the_old_tokens_on_a_bad_one() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("tokens");
        std::fs::write(&file, "first-token\n").expect("write");
        let tokens = Tokens::load(Some(&file)).expect("load");
        assert_eq!(tokens.reload().expect("reload"), Reload::Unchanged);
        std::fs::write(&file, "first-token\nsecond-token\n").expect("write");
        assert_eq!(tokens.reload().expect("reload"), Reload::Changed(2));
        assert!(tokens.permits(Some("second-token")));
        std::fs::write(&file, "\n# nothing\n").expect("write");
        assert!(matches!(tokens.reload(), Err(TokenError::Empty { .. })));
        std::fs::remove_file(&file).expect("remove");
        assert!(matches!(tokens.reload(), Err(TokenError::Read { .. })));
        assert!(
            tokens.permits(Some("first-token")),
            "kept after bad reloads"
        );
    }

    #[test]
    fn a_token_that_a_url_would_escape_is_refused_without_being_shown() {
        let err = parse_tokens("good-one\nbad token/x\n", "the file").expect_err("refused");
        let text = err.to_string();
        assert!(text.contains("token 2"), "{text}");
        assert!(!text.contains("bad token"), "{text}");
        assert!(matches!(
            parse_tokens("", "f"),
            Err(TokenError::Empty { .. })
        ));
    }

    #[test]
    fn the_shipped_placeholder_is_never_accepted() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("tokens");
        std::fs::write(
            &path,
            "# shipped\nREPLACE-ME-placeholder-token-not-a-secret\n",
        )
        .expect("write");
        let tokens = Tokens::load(Some(&path)).expect("a placeholder alone still starts");
        assert!(!tokens.is_open(), "a placeholder does not open the webhook");
        assert_eq!((tokens.count(), tokens.placeholders()), (0, 1));
        assert!(!tokens.permits(Some("REPLACE-ME-placeholder-token-not-a-secret")));
        assert!(!tokens.permits(None));
        std::fs::write(
            &path,
            "REPLACE-ME-placeholder-token-not-a-secret\nreal-token-123\n",
        )
        .expect("write");
        assert_eq!(tokens.reload().expect("reload"), Reload::Changed(1));
        assert_eq!(tokens.placeholders(), 1);
        assert!(tokens.permits(Some("real-token-123")));
        assert!(!tokens.permits(Some("REPLACE-ME-placeholder-token-not-a-secret")));
    }

    #[test]
    fn without_a_token_the_webhook_is_open() {
        // The variable is not set in the test environment.
        let tokens = Tokens::load(None).expect("load");
        assert!(tokens.is_open());
        assert!(tokens.permits(None));
    }

    #[test]
    fn the_client_is_the_peer_unless_the_peer_is_a_trusted_proxy() {
        let list = Allowlist {
            allowed: nets(&["203.0.113.0/24"]),
            trusted_proxies: nets(&["10.0.0.0/8"]),
        };
        // A direct client: its own address, whatever it claims.
        assert_eq!(
            list.client(ip("198.51.100.7"), &["203.0.113.5"]),
            Some(ip("198.51.100.7"))
        );
        assert!(!list.permits(ip("198.51.100.7"), &["203.0.113.5"]));
        assert!(list.permits(ip("203.0.113.9"), &[]));
        // Through a trusted proxy: the right-most untrusted hop.
        assert!(list.permits(ip("10.1.2.3"), &["198.51.100.1, 203.0.113.5, 10.9.9.9"]));
        assert!(!list.permits(ip("10.1.2.3"), &["203.0.113.5, 198.51.100.1"]));
        assert!(list.permits(ip("10.1.2.3"), &["198.51.100.1", "203.0.113.5:4711"]));
        // A proxy with no header is the client itself; an unreadable header is refused.
        assert!(!list.permits(ip("10.1.2.3"), &[]));
        assert!(!list.permits(ip("10.1.2.3"), &["unknown"]));
        // IPv4-mapped IPv6 peers are their IPv4 address.
        assert!(list.permits(ip("::ffff:203.0.113.9"), &[]));
    }

    #[test]
    fn with_no_ranges_every_address_may_post() {
        assert!(Allowlist::default().permits(ip("192.0.2.1"), &["garbage"]));
    }
}
