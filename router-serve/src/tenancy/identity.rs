//! Who is calling: API keys mapped to {team, user, tier}. Keys are kept only as SHA-256
//! digests and compared in constant time; [`Identity`] never holds the key itself.

use std::collections::HashMap;
use std::sync::RwLock;

use crate::util::sha256_hex;

/// The caller, as far as routing and accounting care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The key's name; empty for anonymous requests.
    pub key: String,
    pub team: String,
    pub user: String,
    pub tier: String,
    pub rpm: Option<u32>,
    pub tpm: Option<u64>,
    /// The key's user is the request's `user` field (the key names none and allows it).
    pub user_from_request: bool,
}

impl Identity {
    /// An unauthenticated caller (auth not required), named by the body's `user` field (or
    /// [`NO_USER`]).
    pub fn anonymous(user: Option<&str>) -> Self {
        Self {
            key: String::new(),
            team: String::new(),
            user: request_user(user),
            tier: default_tier(),
            rpm: None,
            tpm: None,
            user_from_request: true,
        }
    }

    /// The identity a request by this key runs as: the key's own user; else, where the key
    /// allows it, the request's `user`; else [`NO_USER`]. So a key cannot escape a user budget
    /// by changing or omitting the body's `user`.
    pub fn for_request(mut self, user: Option<&str>) -> Self {
        if self.user.is_empty() {
            self.user = if self.user_from_request {
                request_user(user)
            } else {
                NO_USER.to_owned()
            };
        }
        self
    }
}

/// The user of a request that names none (user budgets apply to it as to any user).
pub const NO_USER: &str = "-";

fn request_user(user: Option<&str>) -> String {
    user.map(str::trim)
        .filter(|u| !u.is_empty())
        .unwrap_or(NO_USER)
        .to_owned()
}

/// The tier of keys that name none, and of anonymous callers.
pub fn default_tier() -> String {
    "default".to_owned()
}

/// Hex SHA-256 of a key.
pub fn key_digest(key: &str) -> String {
    sha256_hex(key)
}

/// Known keys by digest.
#[derive(Debug, Clone, Default)]
pub struct KeyTable {
    by_digest: HashMap<String, Identity>,
}

impl KeyTable {
    pub fn insert(&mut self, digest: String, identity: Identity) {
        self.by_digest.insert(digest, identity);
    }

    pub fn remove_named(&mut self, name: &str) -> bool {
        let before = self.by_digest.len();
        self.by_digest.retain(|_, id| id.key != name);
        before != self.by_digest.len()
    }

    pub fn names(&self) -> Vec<&Identity> {
        let mut ids: Vec<&Identity> = self.by_digest.values().collect();
        ids.sort_by(|a, b| a.key.cmp(&b.key));
        ids
    }

    /// The identity of `key`. Every stored digest is compared, in constant time, so the
    /// time taken says nothing about which key or how much of one matched.
    pub fn lookup(&self, key: &str) -> Option<&Identity> {
        let digest = key_digest(key);
        let mut found = None;
        for (d, id) in &self.by_digest {
            if constant_time_eq(d.as_bytes(), digest.as_bytes()) {
                found = Some(id);
            }
        }
        found
    }
}

impl FromIterator<(String, Identity)> for KeyTable {
    /// A table of (digest, identity) pairs.
    fn from_iter<I: IntoIterator<Item = (String, Identity)>>(pairs: I) -> Self {
        Self {
            by_digest: pairs.into_iter().collect(),
        }
    }
}

/// A [`KeyTable`] that changes while the server runs: the keys created and revoked through
/// the admin API, as a store holds them.
#[derive(Debug, Default)]
pub struct LiveKeys(RwLock<KeyTable>);

impl LiveKeys {
    pub fn new(table: KeyTable) -> Self {
        Self(RwLock::new(table))
    }

    /// The identity of `key`, if it is one of these.
    pub fn lookup(&self, key: &str) -> Option<Identity> {
        self.0.read().ok()?.lookup(key).cloned()
    }

    /// Every identity, by name.
    pub fn identities(&self) -> Vec<Identity> {
        self.0
            .read()
            .map(|t| t.names().into_iter().cloned().collect())
            .unwrap_or_default()
    }

    pub fn insert(&self, digest: String, identity: Identity) {
        if let Ok(mut table) = self.0.write() {
            table.insert(digest, identity);
        }
    }

    pub fn remove_named(&self, name: &str) {
        if let Ok(mut table) = self.0.write() {
            table.remove_named(name);
        }
    }

    /// Replaces every key (a fresh read of the store's truth).
    pub fn replace(&self, table: KeyTable) {
        if let Ok(mut current) = self.0.write() {
            *current = table;
        }
    }
}

#[cfg(test)]
impl Identity {
    /// A caller for tests: key `k` of team `search`, user `alice`, tier `free`, no limits.
    pub(crate) fn example() -> Self {
        Self {
            key: "k".into(),
            team: "search".into(),
            user: "alice".into(),
            tier: "free".into(),
            rpm: None,
            tpm: None,
            user_from_request: false,
        }
    }
}

/// Compares without an early exit.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> Identity {
        Identity::example()
    }

    #[test]
    fn keys_are_found_by_digest_and_never_debug_printed() {
        let mut table = KeyTable::default();
        table.insert(key_digest("sk-secret"), identity());
        assert_eq!(
            table.lookup("sk-secret").map(|i| i.user.as_str()),
            Some("alice")
        );
        assert!(table.lookup("sk-secre").is_none());
        assert!(!format!("{table:?}").contains("sk-secret"));
    }
}
