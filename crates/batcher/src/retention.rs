//! Finished results kept for clients to fetch: for a TTL, within a byte
//! budget, oldest first out. Every operation is O(1) (amortized), so a busy
//! server pays nothing per result it lets go.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::{Duration, Instant};

/// Ids remembered after their result went, so lookups answer "gone" (410)
/// rather than "unknown" (404). Bounded: the oldest are forgotten first.
/// Hashes, not strings, so the bound costs a few MB at most.
pub(crate) struct Tombstones {
    set: HashSet<u64>,
    order: VecDeque<u64>,
    cap: usize,
}

impl Tombstones {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            set: HashSet::new(),
            order: VecDeque::new(),
            cap,
        }
    }

    pub(crate) fn insert(&mut self, id: &str) {
        let h = hash(id);
        if self.set.insert(h) {
            self.order.push_back(h);
        }
        while self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
    }

    pub(crate) fn contains(&self, id: &str) -> bool {
        self.set.contains(&hash(id))
    }
}

fn hash(id: &str) -> u64 {
    // Fixed keys: the same id hashes the same for the life of the process.
    let mut h = DefaultHasher::new();
    id.hash(&mut h);
    h.finish()
}

/// Why a result left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Departure {
    Expired,
    /// Evicted to stay within the byte budget.
    Evicted,
}

/// Held results in the order they finished, which is also the order they
/// expire in (one TTL for all).
pub(crate) struct Retention {
    ttl: Duration,
    budget: u64,
    order: VecDeque<(Instant, String)>,
    /// Ids still held and their bytes; an `order` entry not here was released early.
    sizes: HashMap<String, u64>,
    held_bytes: u64,
    pub(crate) gone: Tombstones,
}

impl Retention {
    pub(crate) fn new(ttl: Duration, budget: u64) -> Self {
        Self {
            ttl,
            budget,
            order: VecDeque::new(),
            sizes: HashMap::new(),
            held_bytes: 0,
            gone: Tombstones::new(100_000),
        }
    }

    pub(crate) fn hold(&mut self, id: &str, bytes: u64, now: Instant) {
        if self.sizes.insert(id.to_string(), bytes).is_none() {
            self.order.push_back((now + self.ttl, id.to_string()));
            self.held_bytes += bytes;
        }
    }

    /// Lets a result go before its time; its id answers "gone" from now on.
    pub(crate) fn release(&mut self, id: &str) {
        if let Some(bytes) = self.sizes.remove(id) {
            self.held_bytes -= bytes;
        }
        self.gone.insert(id);
    }

    /// The next result that must go now (past its TTL, or the oldest while
    /// over budget), already forgotten here; the caller drops what it keeps
    /// under that id. The newest result always stays, so one result larger
    /// than the whole budget can still be fetched.
    pub(crate) fn next_departure(&mut self, now: Instant) -> Option<(String, Departure)> {
        loop {
            let (at, id) = self.order.front()?;
            if !self.sizes.contains_key(id) {
                self.order.pop_front();
                continue;
            }
            let why = if *at <= now {
                Departure::Expired
            } else if self.held_bytes > self.budget && self.sizes.len() > 1 {
                Departure::Evicted
            } else {
                return None;
            };
            let (_, id) = self.order.pop_front()?;
            self.release(&id);
            return Some((id, why));
        }
    }

    pub(crate) fn held_bytes(&self) -> u64 {
        self.held_bytes
    }

    pub(crate) fn held(&self) -> usize {
        self.sizes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(r: &mut Retention, now: Instant) -> Vec<(String, Departure)> {
        std::iter::from_fn(|| r.next_departure(now)).collect()
    }

    #[test]
    fn results_expire_in_finish_order_after_the_ttl() {
        let t0 = Instant::now();
        let mut r = Retention::new(Duration::from_secs(10), u64::MAX);
        r.hold("a", 5, t0);
        r.hold("b", 5, t0 + Duration::from_secs(3));
        assert!(drain(&mut r, t0 + Duration::from_secs(9)).is_empty());
        assert_eq!(
            drain(&mut r, t0 + Duration::from_secs(10)),
            [("a".to_string(), Departure::Expired)]
        );
        assert!(r.gone.contains("a") && !r.gone.contains("b"));
        assert_eq!((r.held(), r.held_bytes()), (1, 5));
    }

    #[test]
    fn over_budget_evicts_oldest_first_but_keeps_the_newest() {
        let t0 = Instant::now();
        let mut r = Retention::new(Duration::from_secs(60), 100);
        r.hold("a", 60, t0);
        r.hold("b", 30, t0);
        assert!(drain(&mut r, t0).is_empty());
        r.hold("c", 30, t0);
        assert_eq!(drain(&mut r, t0), [("a".to_string(), Departure::Evicted)]);
        assert_eq!(r.held_bytes(), 60);
        // One result bigger than the budget stays until the next one comes.
        r.hold("huge", 500, t0);
        let out = drain(&mut r, t0);
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!((r.held(), r.held_bytes()), (1, 500));
    }

    #[test]
    fn released_results_free_their_bytes_and_read_as_gone() {
        let t0 = Instant::now();
        let mut r = Retention::new(Duration::from_secs(1), 100);
        r.hold("a", 40, t0);
        r.hold("b", 40, t0);
        r.release("a");
        assert_eq!(r.held_bytes(), 40);
        assert!(r.gone.contains("a"));
        // The stale order entry is skipped, not reported again.
        assert_eq!(
            drain(&mut r, t0 + Duration::from_secs(2)),
            [("b".to_string(), Departure::Expired)]
        );
    }

    #[test]
    fn tombstones_are_bounded() {
        let mut g = Tombstones::new(3);
        for id in ["a", "b", "c", "d"] {
            g.insert(id);
        }
        assert!(!g.contains("a"));
        assert!(g.contains("b") && g.contains("d"));
        assert_eq!(g.order.len(), 3);
    }
}
