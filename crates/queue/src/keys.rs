//! Where a queue's data lives in Redis. Every key of one queue shares the
//! `anyaccel:queue:<name>` prefix, in one hash slot (`{…}`), so the Lua
//! scripts that touch several keys also work on a clustered Redis.

/// The consumer group every replica of a queue reads through.
pub const GROUP: &str = "replicas";

#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
    /// The stream of queued jobs (what KEDA's `redis-streams` trigger watches).
    pub stream: String,
}

impl Keys {
    pub fn new(queue: &str) -> Self {
        let prefix = format!("anyaccel:queue:{{{queue}}}");
        Self {
            stream: format!("{prefix}:jobs"),
            prefix,
        }
    }

    pub fn job(&self, id: &str) -> String {
        format!("{}:job:{id}", self.prefix)
    }

    pub fn events(&self, id: &str) -> String {
        format!("{}:job:{id}:events", self.prefix)
    }

    /// Outlives an expired job, so its id reads as gone rather than unknown.
    pub fn gone(&self, id: &str) -> String {
        format!("{}:gone:{id}", self.prefix)
    }

    pub fn idempotency(&self, key: &str) -> String {
        format!("{}:idempotency:{key}", self.prefix)
    }

    pub fn file(&self, name: &str) -> String {
        format!("{}:file:{name}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::Keys;

    #[test]
    fn every_key_of_a_queue_shares_its_hash_slot() {
        let k = Keys::new("sd15");
        assert_eq!(k.stream, "anyaccel:queue:{sd15}:jobs");
        for key in [
            k.job("j"),
            k.events("j"),
            k.gone("j"),
            k.idempotency("x"),
            k.file("f"),
        ] {
            assert!(key.starts_with("anyaccel:queue:{sd15}:"), "{key}");
        }
    }
}
