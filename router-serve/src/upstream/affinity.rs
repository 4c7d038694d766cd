//! Prefix-cache affinity: a prompt is cut into blocks of characters, each block's hash chained
//! to the ones before it (so a hash stands for the whole prefix up to that block), and a pool
//! remembers which endpoints recently served each prefix hash. A model server with prefix
//! caching (vLLM, SGLang) answers a request whose prefix it still holds without recomputing it.
//!
//! Memory is bounded: at most `capacity` hashes, least recently used dropped first.

use std::collections::{HashMap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};

/// The chained hashes of `text`'s first `max_blocks` whole blocks of `block_chars` characters
/// (a trailing partial block is left out: it is rarely shared).
pub fn prefix_hashes(text: &str, block_chars: usize, max_blocks: usize) -> Vec<u64> {
    let mut hashes = Vec::new();
    let mut previous = 0u64;
    let (mut start, mut count) = (0, 0);
    let boundaries = text.char_indices().map(|(i, _)| i).chain([text.len()]);
    for i in boundaries {
        if hashes.len() == max_blocks {
            break;
        }
        if count == block_chars {
            let mut hasher = DefaultHasher::new();
            previous.hash(&mut hasher);
            text[start..i].hash(&mut hasher);
            previous = hasher.finish();
            hashes.push(previous);
            (start, count) = (i, 0);
        }
        count += 1;
    }
    hashes
}

/// What each endpoint of a pool recently served: per endpoint, the last `capacity` block
/// hashes it was sent, least recently used dropped first. The capacity models the endpoint's
/// prefix cache: set near the blocks its KV cache holds, an endpoint "has" a prefix in the
/// index about as long as it has it in its cache.
#[derive(Debug)]
pub struct PrefixIndex {
    endpoints: Vec<Lru>,
}

impl PrefixIndex {
    pub fn new(endpoints: usize, capacity: usize) -> Self {
        Self {
            endpoints: (0..endpoints).map(|_| Lru::new(capacity)).collect(),
        }
    }

    /// Per endpoint, how many of `hashes`' leading blocks it holds.
    pub fn matched(&self, hashes: &[u64]) -> Vec<usize> {
        self.endpoints
            .iter()
            .map(|lru| hashes.iter().take_while(|h| lru.contains(**h)).count())
            .collect()
    }

    /// Records that `endpoint` was sent every block of `hashes`.
    pub fn record(&mut self, hashes: &[u64], endpoint: usize) {
        if let Some(lru) = self.endpoints.get_mut(endpoint) {
            for &hash in hashes {
                lru.touch(hash);
            }
        }
    }

    /// Block hashes held, all endpoints together.
    pub fn blocks(&self) -> usize {
        self.endpoints.iter().map(|l| l.stamps.len()).sum()
    }
}

/// A bounded set of hashes, least recently used out first.
#[derive(Debug)]
struct Lru {
    capacity: usize,
    /// Hash → its last use.
    stamps: HashMap<u64, u64>,
    /// Uses in order; an entry whose stamp no longer matches the map's is stale.
    order: VecDeque<(u64, u64)>,
    clock: u64,
}

impl Lru {
    fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            stamps: HashMap::new(),
            order: VecDeque::new(),
            clock: 0,
        }
    }

    fn contains(&self, hash: u64) -> bool {
        self.stamps.contains_key(&hash)
    }

    fn touch(&mut self, hash: u64) {
        self.clock += 1;
        self.stamps.insert(hash, self.clock);
        self.order.push_back((hash, self.clock));
        while self.stamps.len() > self.capacity {
            let Some((old, stamp)) = self.order.pop_front() else {
                break;
            };
            if self.stamps.get(&old) == Some(&stamp) {
                self.stamps.remove(&old);
            }
        }
        if self.order.len() > 2 * self.capacity + 1024 {
            let stamps = &self.stamps;
            self.order.retain(|(h, s)| stamps.get(h) == Some(s));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_hashes_stand_for_the_whole_prefix() {
        let a = prefix_hashes("abcdefgh-shared-ij", 4, 100);
        let b = prefix_hashes("abcdefgh-other--ij", 4, 100);
        assert_eq!(a.len(), 4, "only whole blocks");
        assert_eq!(a[..2], b[..2]);
        assert_ne!(a[2], b[2]);
        // The same block after a different prefix hashes differently.
        assert_ne!(
            prefix_hashes("xxxxabcd", 4, 9)[1],
            prefix_hashes("yyyyabcd", 4, 9)[1]
        );
        assert_eq!(
            prefix_hashes("ééééé", 2, 100).len(),
            2,
            "characters, not bytes"
        );
        assert_eq!(prefix_hashes(&"a".repeat(1000), 4, 3).len(), 3);
    }

    #[test]
    fn the_index_matches_the_longest_held_prefix_and_forgets_the_least_recent() {
        let mut index = PrefixIndex::new(3, 8);
        let first = prefix_hashes("system prompt, then question one", 4, 100);
        index.record(&first, 2);
        let second = prefix_hashes("system prompt, then question two", 4, 100);
        assert_eq!(index.matched(&second), vec![0, 0, 7], "7 shared blocks");
        // Endpoint 2 holds 8 blocks: a new 4-block prompt pushes out the oldest four.
        let other = prefix_hashes("another prompt!!", 4, 100);
        index.record(&other, 2);
        assert_eq!(index.matched(&other), vec![0, 0, 4]);
        assert_eq!(
            index.matched(&second),
            vec![0, 0, 0],
            "its first blocks are gone"
        );
        assert!(index.blocks() <= 8);
        // Touching keeps a prefix: the re-used one survives, the other goes.
        let mut index = PrefixIndex::new(1, 8);
        let (a, b) = (
            prefix_hashes("aaaabbbb", 4, 9),
            prefix_hashes("ccccdddd", 4, 9),
        );
        index.record(&a, 0);
        index.record(&b, 0);
        index.record(&a, 0);
        for n in 0..1000 {
            index.record(&prefix_hashes(&format!("{n:04}"), 4, 9), 0);
            index.record(&a, 0);
        }
        assert_eq!(index.matched(&a), vec![2]);
        assert_eq!(index.matched(&b), vec![0]);
        assert!(index.endpoints[0].order.len() <= 2 * 8 + 1024);
    }
}
