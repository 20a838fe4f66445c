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
