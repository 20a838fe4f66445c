//! Field-agnostic syntax checks: Kubernetes names and quantities, image
//! references, Hub ids, URLs, AWS regions and ARNs. No regex crate in the
//! library, so they are written out by hand.

/// RFC 1123 label that starts with a letter (so it is also a DNS-1035 label).
pub(super) fn is_dns_label(s: &str, max: usize) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= max
        && b[0].is_ascii_lowercase()
        && b[b.len() - 1] != b'-'
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

pub(super) fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|part| {
            let b = part.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        })
}

pub(super) fn is_hostname(s: &str) -> bool {
    let s = s.strip_prefix("*.").unwrap_or(s);
    s.contains('.') && is_dns_subdomain(s)
}

pub(super) fn is_label_value(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() <= 63
        && (b.is_empty()
            || (b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))))
}

pub(super) fn is_instance_family(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 30
        && b[0].is_ascii_lowercase()
        && b.iter().any(u8::is_ascii_digit)
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

pub(super) fn is_image_repository(s: &str) -> bool {
    let last = s.rsplit('/').next().unwrap_or(s);
    !s.is_empty()
        && !s.contains('@')
        && !last.contains(':')
        && !s.starts_with('/')
        && !s.ends_with('/')
        && s.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-' | '/' | ':')
        })
}

pub(super) fn is_image_tag(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// A Hub id (`owner/name`) or an absolute folder.
pub(super) fn is_model_location(s: &str) -> bool {
    if s.starts_with('/') {
        return s.len() > 1 && !s.chars().any(|c| c.is_whitespace() || c.is_control());
    }
    let mut parts = s.split('/');
    let ok = |part: Option<&str>| {
        part.is_some_and(|p| {
            !p.is_empty()
                && p.len() <= 96
                && !p.starts_with(['.', '-'])
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        })
    };
    ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
}

pub(super) fn is_http_url(s: &str) -> bool {
    let rest = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"));
    rest.is_some_and(|r| {
        !r.is_empty() && !r.starts_with('/') && !r.chars().any(|c| c.is_whitespace() || c == '"')
    })
}

pub(super) fn is_aws_region(s: &str) -> bool {
    // e.g. us-west-2, ap-southeast-1, us-gov-west-1, eu-central-2
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() >= 3
        && parts[0].len() == 2
        && parts[..parts.len() - 1]
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_lowercase()))
        && parts[parts.len() - 1]
            .parse::<u8>()
            .is_ok_and(|n| (1..=20).contains(&n))
}

/// `arn:PARTITION:SERVICE:REGION:ACCOUNT:RESOURCE` with RESOURCE starting
/// with `resource_prefix`.
pub(super) fn is_arn(s: &str, service: &str, resource_prefix: &str) -> bool {
    let parts: Vec<&str> = s.splitn(6, ':').collect();
    parts.len() == 6
        && parts[0] == "arn"
        && parts[1].starts_with("aws")
        && parts[2] == service
        && parts[4].len() == 12
        && parts[4].chars().all(|c| c.is_ascii_digit())
        && parts[5].len() > resource_prefix.len()
        && parts[5].starts_with(resource_prefix)
        && !s.chars().any(char::is_whitespace)
}

/// Key of a Secret's data (`[-._a-zA-Z0-9]+`, at most 253).
pub(super) fn is_secret_key(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Port Redis listens on when a URL names none.
const REDIS_DEFAULT_PORT: u16 = 6379;

/// A parsed `redis.endpoint`.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct RedisEndpoint {
    /// Without brackets for IPv6.
    pub(super) host: String,
    pub(super) port: u16,
    /// What a URL's scheme says (`rediss` is TLS); `None` for `host:port`.
    pub(super) tls: Option<bool>,
}

/// `host:port`, `redis://host[:port]` or `rediss://host[:port]`. The error
/// says what is wrong, to follow the field name and value.
pub(super) fn parse_redis_endpoint(s: &str) -> Result<RedisEndpoint, String> {
    const FORMS: &str = "host:port, redis://host:port or rediss://host:port";
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("contains whitespace; use {FORMS}"));
    }
    let (tls, rest) = match s.split_once("://") {
        None => (None, s),
        Some(("redis", rest)) => (Some(false), rest),
        Some(("rediss", rest)) => (Some(true), rest),
        Some((scheme, _)) => {
            return Err(format!(
                "has scheme {scheme:?}; use {FORMS} (unix sockets and sentinels are not supported)"
            ));
        }
    };
    if rest.contains('@') {
        return Err(
            "carries credentials; the password comes from the Secret named by redis.password_secret"
                .into(),
        );
    }
    if rest.contains(['?', '#']) {
        return Err(format!("has a query or fragment; use {FORMS}"));
    }
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains('/') {
        return Err("has a path; set the database number with redis.database".into());
    }
    // `[v6]:port` or `host:port`; a URL may leave the port out.
    let (host, port) = if let Some(inner) = authority.strip_prefix('[') {
        let Some((v6, after)) = inner.split_once(']') else {
            return Err("has an unclosed '[' around an IPv6 address".into());
        };
        match after.strip_prefix(':') {
            Some(port) => (v6, Some(port)),
            None if after.is_empty() => (v6, None),
            None => return Err(format!("is not {FORMS}")),
        }
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let port = match (port, tls) {
        (Some(p), _) => match p.parse::<u16>() {
            Ok(n) if n > 0 && !p.starts_with('+') => n,
            _ => return Err(format!("has port {p:?}; a port is 1..=65535")),
        },
        (None, Some(_)) => REDIS_DEFAULT_PORT,
        (None, None) => return Err(format!("has no port; use {FORMS}")),
    };
    let host_ok = if authority.starts_with('[') {
        host.contains(':')
            && host
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
    } else {
        is_host_name(host)
    };
    if !host_ok {
        return Err(format!(
            "has host {host:?}, which is not a DNS name or IP address; use {FORMS}"
        ));
    }
    Ok(RedisEndpoint {
        host: host.to_string(),
        port,
        tls,
    })
}

/// A DNS name or IPv4 address, any case (a Service name such as `redis`,
/// `redis.cache.svc.cluster.local`, an ElastiCache endpoint, 10.0.0.5).
fn is_host_name(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b.len() <= 63
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        })
}

/// Kubernetes resource.Quantity syntax (the CRDs' own pattern).
pub(super) fn is_quantity(s: &str) -> bool {
    let s = s.strip_prefix(['+', '-']).unwrap_or(s);
    let digits_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(digits_end);
    // `find` stopped at the first character that is neither digit nor dot.
    let num_ok = match num.split_once('.') {
        None => !num.is_empty(),
        Some((int, frac)) => !frac.contains('.') && (!int.is_empty() || !frac.is_empty()),
    };
    let suffix_ok = match suffix {
        "" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" | "n" | "u" | "m" | "k" | "M" | "G" | "T"
        | "P" | "E" => true,
        exp => {
            let e = exp.strip_prefix(['e', 'E']);
            e.is_some_and(|e| {
                let e = e.strip_prefix(['+', '-']).unwrap_or(e);
                !e.is_empty() && e.chars().all(|c| c.is_ascii_digit())
            })
        }
    };
    num_ok && suffix_ok
}

/// Bytes in a (valid) storage quantity such as "20Gi" or "500M"; None for
/// forms a size is never written in (milli, exponents).
pub(crate) fn quantity_bytes(s: &str) -> Option<u64> {
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult: f64 = match suffix {
        "" => 1.0,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        _ => return None,
    };
    Some((n * mult).ceil() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        for ok in ["1", "3500m", "12Gi", "0.5", ".5", "1e3", "100Gi", "+1"] {
            assert!(is_quantity(ok), "{ok}");
        }
        for bad in ["", "Gi", "1GB", "1.2.3", "abc", "1 Gi", "."] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }

    #[test]
    fn storage_sizes() {
        assert_eq!(quantity_bytes("20Gi"), Some(20 << 30));
        assert_eq!(quantity_bytes("1.5Gi"), Some(3 << 29));
        assert_eq!(quantity_bytes("500M"), Some(500_000_000));
        assert_eq!(quantity_bytes("12"), Some(12));
        assert_eq!(quantity_bytes("1e3"), None);
    }

    #[test]
    fn redis_endpoints() {
        let ep = |host: &str, port: u16, tls: Option<bool>| RedisEndpoint {
            host: host.into(),
            port,
            tls,
        };
        for (text, want) in [
            ("redis.cache:6379", ep("redis.cache", 6379, None)),
            ("10.0.0.5:6380", ep("10.0.0.5", 6380, None)),
            ("redis://redis:6379", ep("redis", 6379, Some(false))),
            ("redis://redis", ep("redis", 6379, Some(false))),
            (
                "rediss://Master.Cache.use1.cache.amazonaws.com:6379/",
                ep("Master.Cache.use1.cache.amazonaws.com", 6379, Some(true)),
            ),
            ("[fd00::1]:6379", ep("fd00::1", 6379, None)),
            ("rediss://[fd00::1]", ep("fd00::1", 6379, Some(true))),
        ] {
            assert_eq!(parse_redis_endpoint(text), Ok(want), "{text}");
        }
        for (bad, says) in [
            ("redis.cache", "no port"),
            ("redis.cache:0", "port"),
            ("redis.cache:65536", "port"),
            ("redis.cache:+6379", "port"),
            ("http://redis:6379", "scheme"),
            ("unix:///var/run/redis.sock", "scheme"),
            ("redis://:secret@redis:6379", "credentials"),
            ("redis://redis:6379/2", "redis.database"),
            ("redis://redis:6379?db=2", "query"),
            ("redis://-redis-:6379", "host"),
            ("redis cache:6379", "whitespace"),
            ("[fd00::1:6379", "unclosed"),
            ("redis://", "host"),
            (":6379", "host"),
        ] {
            let e = parse_redis_endpoint(bad).expect_err(bad);
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn names_and_arns() {
        assert!(is_aws_region("us-west-2"));
        assert!(is_aws_region("us-gov-west-1"));
        assert!(!is_aws_region("uswest2"));
        assert!(is_arn(
            "arn:aws:iam::123456789012:role/keda-cloudwatch",
            "iam",
            "role/"
        ));
        assert!(!is_arn("arn:aws:iam::1234:role/x", "iam", "role/"));
        assert!(is_model_location("acme/sd15-onnx"));
        assert!(is_model_location("/models/sd15"));
        assert!(!is_model_location("acme"));
        assert!(!is_model_location("a/b/c"));
        assert!(is_image_repository(
            "123456789012.dkr.ecr.us-west-2.amazonaws.com/anyaccel"
        ));
        assert!(is_image_repository("localhost:5000/anyaccel"));
        assert!(!is_image_repository("anyaccel:1.0"));
    }
}
