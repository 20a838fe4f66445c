//! `[redis]`: where the servers' shared job queues live, and the Secret
//! with its password.

use super::Problems;
use crate::config::RedisConfig;
use crate::config::input::RawRedis;
use crate::config::syntax::{is_dns_subdomain, is_secret_key, parse_redis_endpoint};

/// Secret key the password is read from unless `password_key` says.
const DEFAULT_PASSWORD_KEY: &str = "password";

pub(super) fn validate_redis(raw: RawRedis, p: &mut Problems) -> Option<RedisConfig> {
    let before = p.0.len();
    let endpoint = match p.required(raw.endpoint, "redis.endpoint") {
        None => None,
        Some(text) => match parse_redis_endpoint(&text) {
            Ok(ep) => Some(ep),
            Err(why) => {
                p.add(format!("redis.endpoint {text:?} {why}"));
                None
            }
        },
    };
    let tls = match (endpoint.as_ref().and_then(|e| e.tls), raw.tls) {
        // A URL's scheme already says it; a second switch could only
        // contradict it.
        (Some(from_scheme), Some(_)) => {
            p.add(format!(
                "redis.tls applies only to a host:port endpoint; the URL's scheme ({}://) already says whether to use TLS",
                if from_scheme { "rediss" } else { "redis" }
            ));
            from_scheme
        }
        (Some(from_scheme), None) => from_scheme,
        (None, tls) => tls.unwrap_or(false),
    };
    let database = match raw.database {
        None => 0,
        Some(d) if (0..=i64::from(i32::MAX)).contains(&d) => d as u32,
        Some(d) => {
            p.add(format!(
                "redis.database ({d}) must be a Redis database number (0, 1, ...)"
            ));
            0
        }
    };
    let password_secret = raw.password_secret;
    if password_secret.is_none() {
        p.add(
            "redis.password_secret is required: the Secret (key redis.password_key, default \"password\") the servers and KEDA read the Redis password from",
        );
    }
    if let Some(s) = &password_secret
        && !is_dns_subdomain(s)
    {
        p.add(format!(
            "redis.password_secret {s:?} is not a valid Secret name"
        ));
    }
    let password_key = raw
        .password_key
        .unwrap_or_else(|| DEFAULT_PASSWORD_KEY.to_string());
    if !is_secret_key(&password_key) {
        p.add(format!(
            "redis.password_key {password_key:?} is not a Secret key ([-._a-zA-Z0-9], at most 253)"
        ));
    }
    if p.0.len() > before {
        return None;
    }
    let endpoint = endpoint?;
    Some(RedisConfig {
        host: endpoint.host,
        port: endpoint.port,
        tls,
        database,
        password_secret: password_secret?,
        password_key,
    })
}
