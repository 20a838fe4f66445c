//! KEDA trigger metadata: built from typed values, and checked the way
//! KEDA's scalers parse it.
//!
//! A trigger's `metadata` is a plain string map in the ScaledObject CRD, so
//! the API server accepts any typo; KEDA only complains later, in its
//! operator log, and the pool silently stops scaling. [`check_trigger`]
//! repeats what KEDA v2.20's `prometheus`, `aws-cloudwatch` and
//! `redis-streams` scalers do when they parse the map
//! (`pkg/scalers/*_scaler.go`, typed config in `pkg/scalers/scalersconfig`),
//! plus KEDA's opt-in unexpected-parameter check, so a bad trigger fails at
//! render time.

use std::collections::BTreeMap;

use crate::crd::{PodIdentityProvider, TriggerAuthenticationSpec};

/// CloudWatch namespace the server's backlog metric is published under;
/// the names come from `anyaccel_metrics`, which the publisher also uses.
pub const CLOUDWATCH_NAMESPACE: &str = anyaccel_metrics::cloudwatch::NAMESPACE;
/// CloudWatch metric name for [`anyaccel_metrics::BACKLOG_SECONDS`].
pub const CLOUDWATCH_BACKLOG_METRIC: &str = anyaccel_metrics::cloudwatch::BACKLOG_SECONDS;
/// CloudWatch dimensions, in the order the trigger lists them. Values come
/// from `ANYACCEL_POOL`, `ANYACCEL_ACCELERATOR` and `ANYACCEL_MODEL`.
pub const CLOUDWATCH_DIMENSION_POOL: &str = anyaccel_metrics::cloudwatch::DIM_POOL;
pub const CLOUDWATCH_DIMENSION_ACCELERATOR: &str = anyaccel_metrics::cloudwatch::DIM_ACCELERATOR;
pub const CLOUDWATCH_DIMENSION_MODEL: &str = anyaccel_metrics::cloudwatch::DIM_MODEL;

/// The Redis stream holding the jobs of queue `queue` (`--redis-queue`),
/// named by the servers' own key layout: `anyaccel:queue:{<queue>}:jobs`.
pub fn redis_stream_key(queue: &str) -> String {
    anyaccel_queue::Keys::new(queue).stream
}

/// Trigger types this renderer emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScalerType {
    Prometheus,
    AwsCloudwatch,
    RedisStreams,
}

impl ScalerType {
    pub fn as_str(self) -> &'static str {
        match self {
            ScalerType::Prometheus => "prometheus",
            ScalerType::AwsCloudwatch => "aws-cloudwatch",
            ScalerType::RedisStreams => "redis-streams",
        }
    }
}

/// Metadata of a `prometheus` trigger.
#[derive(Debug, Clone, PartialEq)]
pub struct PrometheusMetadata {
    pub server_address: String,
    pub query: String,
    /// Per-replica target (HPA AverageValue).
    pub threshold: f64,
}

impl PrometheusMetadata {
    pub fn to_map(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("serverAddress".into(), self.server_address.clone()),
            ("query".into(), self.query.clone()),
            ("threshold".into(), format_number(self.threshold)),
        ])
    }
}

/// Which CloudWatch series an `aws-cloudwatch` trigger reads.
#[derive(Debug, Clone, PartialEq)]
pub enum CloudWatchMetric {
    Dimensions {
        namespace: String,
        metric_name: String,
        /// (name, value) pairs; KEDA takes them as two `;`-joined lists.
        dimensions: Vec<(String, String)>,
    },
    /// A Metrics Insights or math expression.
    Expression(String),
}

/// Metadata of an `aws-cloudwatch` trigger.
#[derive(Debug, Clone, PartialEq)]
pub struct CloudWatchMetadata {
    pub metric: CloudWatchMetric,
    pub aws_region: String,
    pub metric_stat: String,
    pub metric_stat_period: u32,
    pub metric_collection_time: u32,
    /// Seconds the query window ends before now (then rounded down to the
    /// period), so the newest period read is complete.
    pub metric_end_time_offset: u32,
    pub target_metric_value: f64,
    /// Value KEDA uses when CloudWatch returns no datapoint.
    pub min_metric_value: f64,
}

impl CloudWatchMetadata {
    pub fn to_map(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        match &self.metric {
            CloudWatchMetric::Dimensions {
                namespace,
                metric_name,
                dimensions,
            } => {
                m.insert("namespace".into(), namespace.clone());
                m.insert("metricName".into(), metric_name.clone());
                let names: Vec<&str> = dimensions.iter().map(|(n, _)| n.as_str()).collect();
                let values: Vec<&str> = dimensions.iter().map(|(_, v)| v.as_str()).collect();
                m.insert("dimensionName".into(), names.join(";"));
                m.insert("dimensionValue".into(), values.join(";"));
            }
            CloudWatchMetric::Expression(e) => {
                m.insert("expression".into(), e.clone());
            }
        }
        m.insert("awsRegion".into(), self.aws_region.clone());
        m.insert("metricStat".into(), self.metric_stat.clone());
        m.insert(
            "metricStatPeriod".into(),
            self.metric_stat_period.to_string(),
        );
        m.insert(
            "metricCollectionTime".into(),
            self.metric_collection_time.to_string(),
        );
        if self.metric_end_time_offset > 0 {
            m.insert(
                "metricEndTimeOffset".into(),
                self.metric_end_time_offset.to_string(),
            );
        }
        m.insert(
            "targetMetricValue".into(),
            format_number(self.target_metric_value),
        );
        m.insert(
            "minMetricValue".into(),
            format_number(self.min_metric_value),
        );
        m
    }
}

/// Metadata of a `redis-streams` trigger on a stream's length (`XLEN`).
/// The servers delete a job's entry once it is finished, so the length is
/// the queue's jobs waiting or running: the work to size the pool for. (A
/// consumer group's lag counts only the waiting ones, which is near zero
/// whenever the replicas keep up: as a replica count it would shrink the
/// pool until they no longer do.) The password comes from the trigger's
/// TriggerAuthentication, never from here.
#[derive(Debug, Clone, PartialEq)]
pub struct RedisStreamsMetadata {
    /// `host:port`.
    pub address: String,
    pub stream: String,
    /// Per-replica target for the length (HPA AverageValue).
    pub stream_length: u64,
    pub enable_tls: bool,
    pub database_index: u32,
}

impl RedisStreamsMetadata {
    pub fn to_map(&self) -> BTreeMap<String, String> {
        // No consumerGroup: with one KEDA reads the group's pending entries
        // or lag instead of the length.
        let mut m = BTreeMap::from([
            ("address".into(), self.address.clone()),
            ("stream".into(), self.stream.clone()),
            ("streamLength".into(), self.stream_length.to_string()),
        ]);
        if self.enable_tls {
            m.insert("enableTLS".into(), "true".into());
        }
        if self.database_index != 0 {
            m.insert("databaseIndex".into(), self.database_index.to_string());
        }
        m
    }
}

/// Decimal text KEDA's JSON-number parsing accepts (no exponent, no
/// trailing dot).
pub fn format_number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        let s = format!("{v:.6}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// KEDA's `checkMetricStatPeriod`.
pub fn check_metric_stat_period(period: i64) -> Result<(), String> {
    if period < 1 {
        return Err(format!(
            "metricStatPeriod can not be smaller than 1, however, {period} is provided"
        ));
    }
    if period <= 60 {
        return match period {
            1 | 5 | 10 | 30 | 60 => Ok(()),
            _ => Err(format!(
                "metricStatPeriod < 60 has to be one of [1, 5, 10, 30], however, {period} is provided"
            )),
        };
    }
    if period % 60 != 0 {
        return Err(format!(
            "metricStatPeriod >= 60 has to be a multiple of 60, however, {period} is provided"
        ));
    }
    Ok(())
}

/// KEDA's rule for `metricCollectionTime` (after the period is valid).
pub fn check_collection_time(collection: i64, period: i64) -> Result<(), String> {
    if collection < 0 || period == 0 || collection % period != 0 {
        return Err(format!(
            "metricCollectionTime must be greater than 0 and a multiple of metricStatPeriod({period}), {collection} is given"
        ));
    }
    // KEDA accepts 0, but then the query window is empty and the trigger
    // always reads minMetricValue: never what anyone means.
    if collection == 0 {
        return Err("metricCollectionTime 0 gives an empty query window".into());
    }
    Ok(())
}

/// CloudWatch's StandardUnit values (aws-sdk-go-v2 `types.StandardUnit`).
const CLOUDWATCH_UNITS: &[&str] = &[
    "Seconds",
    "Microseconds",
    "Milliseconds",
    "Bytes",
    "Kilobytes",
    "Megabytes",
    "Gigabytes",
    "Terabytes",
    "Bits",
    "Kilobits",
    "Megabits",
    "Gigabits",
    "Terabits",
    "Percent",
    "Count",
    "Bytes/Second",
    "Kilobytes/Second",
    "Megabytes/Second",
    "Gigabytes/Second",
    "Terabytes/Second",
    "Bits/Second",
    "Kilobits/Second",
    "Megabits/Second",
    "Gigabits/Second",
    "Terabits/Second",
    "Count/Second",
    "None",
];

/// Parameters each scaler reads from trigger metadata (KEDA's struct tags).
const PROMETHEUS_KEYS: &[&str] = &[
    "serverAddress",
    "query",
    "queryParameters",
    "threshold",
    "activationThreshold",
    "namespace",
    "customHeaders",
    "ignoreNullValues",
    "unsafeSsl",
    "awsRegion",
    "timeout",
    "identityOwner",
    "authModes",
];

/// The stream fields plus the shared `redisConnectionInfo` ones.
const REDIS_STREAMS_KEYS: &[&str] = &[
    "stream",
    "consumerGroup",
    "pendingEntriesCount",
    "streamLength",
    "lagCount",
    "activationLagCount",
    "databaseIndex",
    "enableTLS",
    "address",
    "addresses",
    "host",
    "hosts",
    "port",
    "ports",
    "username",
    "password",
    "sentinelUsername",
    "sentinelPassword",
    "sentinelMaster",
    "unsafeSsl",
];

const CLOUDWATCH_KEYS: &[&str] = &[
    "namespace",
    "metricName",
    "dimensionName",
    "dimensionValue",
    "expression",
    "targetMetricValue",
    "activationTargetMetricValue",
    "minMetricValue",
    "ignoreNullValues",
    "metricCollectionTime",
    "metricStat",
    "metricUnit",
    "metricStatPeriod",
    "metricEndTimeOffset",
    "awsAccountId",
    "awsRegion",
    "awsEndpoint",
    "identityOwner",
];

/// Checks a trigger the way KEDA would when it builds the scaler.
///
/// `metric_type` is the trigger's `metricType` (None = AverageValue);
/// `auth` is the spec of the TriggerAuthentication its `authenticationRef`
/// names, if any. Beyond KEDA's own checks, this renderer requires
/// credentials it can see: CloudWatch needs `podIdentity.provider: aws`
/// (else the scaler would look for static keys this renderer never sets),
/// and Redis a `password` from a Secret, never in the metadata, where it
/// would sit in plain text in the ScaledObject.
pub fn check_trigger(
    scaler: &str,
    metadata: &BTreeMap<String, String>,
    metric_type: Option<&str>,
    auth: Option<&TriggerAuthenticationSpec>,
) -> Result<(), String> {
    match metric_type {
        None | Some("AverageValue") | Some("Value") => {}
        Some("Utilization") => {
            return Err(
                "'Utilization' metric type is unsupported for external metrics, allowed values are 'Value' or 'AverageValue'"
                    .into(),
            );
        }
        Some(other) => return Err(format!("unknown metricType {other:?}")),
    }
    let get = |k: &str| metadata.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
    let known: &[&str] = match scaler {
        "prometheus" => PROMETHEUS_KEYS,
        "aws-cloudwatch" => CLOUDWATCH_KEYS,
        "redis-streams" => REDIS_STREAMS_KEYS,
        other => {
            return Err(format!(
                "scaler type {other:?} is not one this renderer emits"
            ));
        }
    };
    for k in metadata.keys() {
        let base = k.strip_suffix("FromEnv").unwrap_or(k);
        if !known.contains(&base) {
            return Err(format!("unexpected parameter {k:?} for scaler {scaler}"));
        }
    }
    let required = |k: &str| {
        get(k).ok_or_else(|| format!("missing required parameter {k:?} in [triggerMetadata]"))
    };
    let float = |k: &str, v: &str| {
        parse_json_float(v)
            .ok_or_else(|| format!("error parsing {k} metadata: {v:?} is not a number"))
    };
    let int = |k: &str, v: &str| {
        parse_json_int(v)
            .ok_or_else(|| format!("error parsing {k} metadata: {v:?} is not an integer"))
    };
    let boolean = |k: &str| -> Result<(), String> {
        if let Some(v) = get(k)
            && parse_go_bool(v).is_none()
        {
            return Err(format!("unable to parse boolean value {v:?} for {k}"));
        }
        Ok(())
    };

    match scaler {
        "prometheus" => {
            let addr = required("serverAddress")?;
            if !(addr.starts_with("http://") || addr.starts_with("https://")) {
                return Err(format!("serverAddress {addr:?} is not an http(s) URL"));
            }
            required("query")?;
            let t = float("threshold", required("threshold")?)?;
            // The HPA rejects a zero or negative target.
            if t <= 0.0 {
                return Err(format!("threshold must be positive, {t} is given"));
            }
            if let Some(v) = get("activationThreshold") {
                float("activationThreshold", v)?;
            }
            boolean("ignoreNullValues")?;
            boolean("unsafeSsl")?;
            Ok(())
        }
        "redis-streams" => check_redis_streams(metadata, auth),
        _ => {
            let target = float("targetMetricValue", required("targetMetricValue")?)?;
            if target <= 0.0 {
                return Err(format!(
                    "targetMetricValue must be positive, {target} is given"
                ));
            }
            float("minMetricValue", required("minMetricValue")?)?;
            if let Some(v) = get("activationTargetMetricValue") {
                float("activationTargetMetricValue", v)?;
            }
            boolean("ignoreNullValues")?;
            required("awsRegion")?;
            if get("expression").is_none() {
                get("namespace").ok_or("namespace not given")?;
                get("metricName").ok_or("metric name not given")?;
                let names = get("dimensionName").ok_or("dimension name not given")?;
                let values = get("dimensionValue").ok_or("dimension value not given")?;
                if names.split(';').count() != values.split(';').count() {
                    return Err("dimensionName and dimensionValue are not matching in size".into());
                }
                if let Some(unit) = get("metricUnit")
                    && !CLOUDWATCH_UNITS.contains(&unit)
                {
                    return Err(format!(
                        "metricUnit '{unit}' is not one of {CLOUDWATCH_UNITS:?}"
                    ));
                }
            }
            if let Some(stat) = get("metricStat")
                && !is_cloudwatch_stat(stat)
            {
                return Err(format!(
                    "metricStat {stat:?} is not a CloudWatch statistic (SampleCount, Average, Sum, Minimum, Maximum, pNN)"
                ));
            }
            let period = match get("metricStatPeriod") {
                Some(v) => int("metricStatPeriod", v)?,
                None => 300,
            };
            check_metric_stat_period(period)?;
            let collection = match get("metricCollectionTime") {
                Some(v) => int("metricCollectionTime", v)?,
                None => 300,
            };
            check_collection_time(collection, period)?;
            if let Some(v) = get("metricEndTimeOffset") {
                int("metricEndTimeOffset", v)?;
            }
            let pod_identity_aws = auth
                .and_then(|a| a.pod_identity.as_ref())
                .is_some_and(|p| p.provider == PodIdentityProvider::Aws);
            if !pod_identity_aws {
                // KEDA would look for awsAccessKeyID / awsSecretAccessKey.
                return Err("no AWS credentials: reference a TriggerAuthentication with podIdentity.provider aws".into());
            }
            Ok(())
        }
    }
}

/// KEDA's `redisStreamsMetadata` parsing and `Validate`, for one
/// (non-cluster, non-sentinel) Redis.
fn check_redis_streams(
    metadata: &BTreeMap<String, String>,
    auth: Option<&TriggerAuthenticationSpec>,
) -> Result<(), String> {
    let get = |k: &str| metadata.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
    let from_auth = |k: &str| auth.is_some_and(|a| a.secret_parameters().any(|p| p == k));
    // A value may also come from the target container's env (`xFromEnv`).
    let given = |k: &str| get(k).is_some() || get(&format!("{k}FromEnv")).is_some();
    let int = |k: &str, default: i64| -> Result<i64, String> {
        match get(k) {
            None => Ok(default),
            Some(v) => parse_json_int(v).ok_or_else(|| {
                format!("error parsing redis stream metadata: {k} {v:?} is not an integer")
            }),
        }
    };

    // validateRedisAddress: an address, or hosts and ports pairwise.
    let address = given("address") || given("addresses") || from_auth("address");
    let hosts = ["host", "hosts"].iter().any(|k| given(k) || from_auth(k));
    let ports = ["port", "ports"].iter().any(|k| given(k) || from_auth(k));
    if let (Some(h), Some(p)) = (get("host").or(get("hosts")), get("port").or(get("ports")))
        && h.split(',').count() != p.split(',').count()
    {
        return Err("not enough hosts or ports given. number of hosts should be equal to the number of ports".into());
    }
    if !(address || (hosts && ports)) {
        return Err("no addresses or hosts given. address should be a comma separated list of host:port or set the host/port values".into());
    }
    // KEDA only needs the text non-empty; go-redis then dials it, so a
    // value without a numeric port fails at every poll instead.
    for key in ["address", "addresses"] {
        if let Some(list) = get(key) {
            for a in list.split(',').map(str::trim) {
                let host_port = a.rsplit_once(':').filter(|(host, port)| {
                    !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
                });
                if host_port.is_none() {
                    return Err(format!("{key} {a:?} is not host:port"));
                }
            }
        }
    }

    // SetEnableTLS.
    if let Some(v) = get("enableTLS") {
        if from_auth("tls") {
            return Err(
                "unable to set `tls` in both ScaledObject and TriggerAuthentication together"
                    .into(),
            );
        }
        parse_go_bool(v).ok_or_else(|| format!("EnableTLS parsing error: {v:?}"))?;
    }
    if let Some(v) = get("unsafeSsl") {
        parse_go_bool(v)
            .ok_or_else(|| format!("unable to parse boolean value {v:?} for unsafeSsl"))?;
    }

    if get("stream").is_none() {
        return Err("missing redis stream name".into());
    }
    // Every count is parsed whichever mode uses it.
    let pending = int("pendingEntriesCount", 5)?;
    let length = int("streamLength", 5)?;
    let lag = int("lagCount", 0)?;
    int("activationLagCount", 0)?;
    let db = int("databaseIndex", 0)?;
    if db < 0 || db > i64::from(i32::MAX) {
        return Err(format!("databaseIndex {db} is not a Redis database number"));
    }
    // Validate: a group with a non-zero lagCount scales on lag, a group
    // without on pending entries, no group on the stream length.
    let (what, target) = match (given("consumerGroup"), lag) {
        (true, 0) => ("pendingEntriesCount", pending),
        (true, lag) => ("lagCount", lag),
        (false, _) => ("streamLength", length),
    };
    // The HPA rejects a zero or negative target.
    if target <= 0 {
        return Err(format!("{what} must be positive, {target} is given"));
    }

    if get("password").is_some() {
        return Err("password in trigger metadata is stored in plain text in the ScaledObject; reference a TriggerAuthentication with a secretTargetRef for parameter password".into());
    }
    if !(from_auth("password") || get("passwordFromEnv").is_some()) {
        return Err("no Redis password: reference a TriggerAuthentication with a secretTargetRef for parameter password".into());
    }
    Ok(())
}

/// Go's strconv.ParseBool.
fn parse_go_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

fn is_cloudwatch_stat(s: &str) -> bool {
    if ["SampleCount", "Average", "Sum", "Minimum", "Maximum"].contains(&s) {
        return true;
    }
    // Extended statistics such as p99, tm90, wm99.9.
    ["p", "tm", "wm", "tc", "ts", "pr"].iter().any(|prefix| {
        s.strip_prefix(prefix).is_some_and(|n| {
            n.parse::<f64>()
                .is_ok_and(|v| (0.0..=100.0).contains(&v) && !n.starts_with('.'))
        })
    })
}

/// Go's json.Unmarshal into float64: JSON number grammar only.
fn parse_json_float(s: &str) -> Option<f64> {
    let b = s.as_bytes();
    let mut i = 0;
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(c) if c.is_ascii_digit() => {
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
        }
        _ => return None,
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return None;
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return None;
        }
    }
    if i != b.len() {
        return None;
    }
    s.parse().ok()
}

/// Go's json.Unmarshal into int64: an integer without fraction or exponent.
fn parse_json_int(s: &str) -> Option<i64> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    if digits.is_empty()
        || !digits.bytes().all(|c| c.is_ascii_digit())
        || (digits.len() > 1 && digits.starts_with('0'))
    {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_numbers_like_go() {
        assert_eq!(parse_json_float("4"), Some(4.0));
        assert_eq!(parse_json_float("0.25"), Some(0.25));
        assert_eq!(parse_json_float("1e3"), Some(1000.0));
        for bad in ["", ".5", "5.", "04", "+1", "1,5", "NaN", "1 "] {
            assert_eq!(parse_json_float(bad), None, "{bad}");
        }
        assert_eq!(parse_json_int("60"), Some(60));
        for bad in ["060", "60.0", "1e2", "", "-"] {
            assert_eq!(parse_json_int(bad), None, "{bad}");
        }
    }

    #[test]
    fn number_text() {
        assert_eq!(format_number(4.0), "4");
        assert_eq!(format_number(2.5), "2.5");
        assert_eq!(format_number(0.125), "0.125");
        assert_eq!(format_number(1.0 / 3.0), "0.333333");
        assert!(parse_json_float(&format_number(7.75)).is_some());
    }

    #[test]
    fn stat_period_rules() {
        for ok in [1, 5, 10, 30, 60, 120, 300] {
            assert!(check_metric_stat_period(ok).is_ok(), "{ok}");
        }
        for bad in [0, 2, 45, 90, 61] {
            assert!(check_metric_stat_period(bad).is_err(), "{bad}");
        }
        assert!(check_collection_time(120, 60).is_ok());
        assert!(check_collection_time(90, 60).is_err());
        assert!(check_collection_time(0, 60).is_err());
        assert!(check_collection_time(-60, 60).is_err());
    }
}
