//! The decision cache: predicted qualities by the exact text embedded, so a repeated prompt
//! skips the encoder. Keys are SHA-256 digests (the texts are not kept); eviction is
//! first-in first-out, bounded by entry count. The cache belongs to one engine, so a reload
//! (new artifact) starts it empty.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

/// A cached prediction.
#[derive(Debug)]
pub struct Cached {
    /// Calibrated predicted quality per model.
    pub quality: Vec<f32>,
    /// Tokens of the embedded text before truncation.
    pub tokens: usize,
}

pub type Key = [u8; 32];

pub fn key(text: &str) -> Key {
    Sha256::digest(text.as_bytes()).into()
}

pub struct DecisionCache {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    map: HashMap<Key, Arc<Cached>>,
    order: VecDeque<Key>,
}

impl DecisionCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            inner: Mutex::new(Inner::default()),
        }
    }

    pub fn get(&self, key: &Key) -> Option<Arc<Cached>> {
        if self.capacity == 0 {
            return None;
        }
        self.inner.lock().ok()?.map.get(key).cloned()
    }

    pub fn insert(&self, key: Key, value: Cached) {
        if self.capacity == 0 {
            return;
        }
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        if inner.map.contains_key(&key) {
            return;
        }
        while inner.order.len() >= self.capacity {
            if let Some(old) = inner.order.pop_front() {
                inner.map.remove(&old);
            }
        }
        inner.order.push_back(key);
        inner.map.insert(key, Arc::new(value));
    }

    pub fn len(&self) -> usize {
        self.inner.lock().map(|i| i.map.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_at_most_capacity_entries_oldest_out_first() {
        let cache = DecisionCache::new(2);
        for text in ["a", "b", "c"] {
            cache.insert(
                key(text),
                Cached {
                    quality: vec![0.5],
                    tokens: 1,
                },
            );
        }
        assert_eq!(cache.len(), 2);
        assert!(cache.get(&key("a")).is_none());
        assert!(cache.get(&key("c")).is_some());
        let off = DecisionCache::new(0);
        off.insert(
            key("a"),
            Cached {
                quality: vec![],
                tokens: 0,
            },
        );
        assert!(off.get(&key("a")).is_none());
    }
}
