//! Trigger metadata checks, on cases modelled after KEDA v2.20's own scaler
//! tests (`pkg/scalers/prometheus_scaler_test.go`,
//! `aws_cloudwatch_scaler_test.go`, `redis_streams_scaler_test.go`): the
//! same inputs must pass or fail here as they do in KEDA.

use std::collections::BTreeMap;

use anyaccel_deploy::crd::{AuthSecretTargetRef, PodIdentity, TriggerAuthenticationSpec};
use anyaccel_deploy::keda::{
    CloudWatchMetadata, CloudWatchMetric, PrometheusMetadata, RedisStreamsMetadata, check_trigger,
};

/// A TriggerAuthentication with KEDA's AWS pod identity.
fn aws() -> Option<TriggerAuthenticationSpec> {
    Some(TriggerAuthenticationSpec {
        pod_identity: Some(PodIdentity::aws(None)),
        ..Default::default()
    })
}

/// A TriggerAuthentication filling these scaler parameters from a Secret.
fn secrets(parameters: &[&str]) -> Option<TriggerAuthenticationSpec> {
    Some(TriggerAuthenticationSpec {
        secret_target_ref: parameters
            .iter()
            .map(|p| AuthSecretTargetRef {
                parameter: p.to_string(),
                name: "redis-auth".into(),
                key: p.to_string(),
            })
            .collect(),
        ..Default::default()
    })
}

fn md(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

const SQS: &[(&str, &str)] = &[
    ("namespace", "AWS/SQS"),
    ("dimensionName", "QueueName"),
    ("dimensionValue", "keda"),
    ("metricName", "ApproximateNumberOfMessagesVisible"),
    ("targetMetricValue", "2"),
    ("minMetricValue", "0"),
    ("awsRegion", "eu-west-1"),
];

fn sqs_with(extra: &[(&str, &str)], without: &[&str]) -> BTreeMap<String, String> {
    let mut m = md(SQS);
    for k in without {
        m.remove(*k);
    }
    m.extend(md(extra));
    m
}

fn cw(m: &BTreeMap<String, String>) -> Result<(), String> {
    check_trigger("aws-cloudwatch", m, None, aws().as_ref())
}

#[test]
fn cloudwatch_cases_from_keda() {
    // (metadata, ok, KEDA's description)
    let cases: Vec<(BTreeMap<String, String>, bool, &str)> = vec![
        (md(&[]), false, "Empty structures"),
        (
            sqs_with(&[], &[]),
            true,
            "properly formed cloudwatch query and awsRegion",
        ),
        (
            md(&[
                (
                    "expression",
                    "SELECT MIN(MessageCount) FROM \"AWS/AmazonMQ\" WHERE Broker = 'production' and Queue = 'worker'",
                ),
                ("targetMetricValue", "2"),
                ("minMetricValue", "0"),
                ("awsRegion", "eu-west-1"),
            ]),
            true,
            "properly formed cloudwatch expression query and awsRegion",
        ),
        (
            sqs_with(&[], &["awsRegion"]),
            false,
            "properly formed cloudwatch query but Region is empty",
        ),
        (sqs_with(&[], &["namespace"]), false, "Missing namespace"),
        (
            sqs_with(&[], &["dimensionName"]),
            false,
            "Missing dimensionName",
        ),
        (
            sqs_with(&[], &["dimensionValue"]),
            false,
            "Missing dimensionValue",
        ),
        (sqs_with(&[], &["metricName"]), false, "Missing metricName"),
        (
            sqs_with(&[], &["targetMetricValue"]),
            false,
            "Missing targetMetricValue",
        ),
        (
            sqs_with(&[], &["minMetricValue"]),
            false,
            "Missing minMetricValue",
        ),
        (
            sqs_with(
                &[("metricCollectionTime", "a"), ("metricStatPeriod", "300")],
                &[],
            ),
            false,
            "if metricCollectionTime assigned with a string, need to be a number",
        ),
        (
            sqs_with(
                &[("metricCollectionTime", "300"), ("metricStatPeriod", "a")],
                &[],
            ),
            false,
            "if metricStatPeriod assigned with a string, need to be a number",
        ),
        (
            sqs_with(
                &[("metricStat", "Average"), ("metricStatPeriod", "300")],
                &[],
            ),
            true,
            "Missing metricCollectionTime not generate error because will get the default value",
        ),
        (
            sqs_with(
                &[("metricCollectionTime", "300"), ("metricStatPeriod", "300")],
                &[],
            ),
            true,
            "Missing metricStat not generate error because will get the default value",
        ),
        (
            sqs_with(
                &[("metricCollectionTime", "300"), ("metricStat", "Average")],
                &[],
            ),
            true,
            "Missing metricStatPeriod not generate error because will get the default value",
        ),
        (
            sqs_with(
                &[("metricUnit", "Count"), ("metricEndTimeOffset", "60")],
                &[],
            ),
            true,
            "set a supported metricUnit",
        ),
        (
            sqs_with(
                &[("metricStatPeriod", "300"), ("metricCollectionTime", "100")],
                &[],
            ),
            false,
            "metricCollectionTime smaller than metricStatPeriod",
        ),
        (
            sqs_with(&[("metricStatPeriod", "250")], &[]),
            false,
            "unsupported metricStatPeriod",
        ),
        (
            sqs_with(&[("metricStatPeriod", "25")], &[]),
            false,
            "unsupported metricStatPeriod",
        ),
        (
            sqs_with(
                &[
                    ("metricStatPeriod", "60"),
                    ("metricCollectionTime", "60"),
                    ("metricUnit", "Hour"),
                ],
                &[],
            ),
            false,
            "unsupported metricUnit",
        ),
        (
            sqs_with(&[("ignoreNullValues", "false")], &[]),
            true,
            "with ignoreNullValues set to false",
        ),
        (
            sqs_with(&[("ignoreNullValues", "true")], &[]),
            true,
            "with ignoreNullValues set to true",
        ),
        (
            sqs_with(&[("ignoreNullValues", "maybe")], &[]),
            false,
            "with ignoreNullValues set to incorrect value",
        ),
        (
            sqs_with(
                &[
                    ("dimensionName", "QueueName;QueueName"),
                    ("dimensionValue", "queue1;queue2"),
                ],
                &[],
            ),
            true,
            "multiple dimensions with valid separator",
        ),
        (
            sqs_with(
                &[
                    ("dimensionName", "QueueName;QueueName"),
                    ("dimensionValue", "queue1"),
                ],
                &[],
            ),
            false,
            "dimensionName and dimensionValue are not matching in size",
        ),
        (
            sqs_with(&[("awsAccountId", "123456789012")], &[]),
            true,
            "metric from another AWS account",
        ),
        (
            sqs_with(&[("targetMetricValue", "2.5")], &[]),
            true,
            "fractional target",
        ),
        (
            sqs_with(&[("targetMetricValue", "two")], &[]),
            false,
            "non-numeric target",
        ),
    ];
    for (m, ok, what) in cases {
        assert_eq!(cw(&m).is_ok(), ok, "{what}: {:?}", cw(&m));
    }
}

#[test]
fn cloudwatch_needs_pod_identity_here_and_rejects_unknown_keys() {
    let m = sqs_with(&[], &[]);
    assert!(check_trigger("aws-cloudwatch", &m, None, None).is_err());
    let typo = sqs_with(&[("metricStatPeriods", "60")], &[]);
    let e = cw(&typo).expect_err("typo");
    assert!(e.contains("metricStatPeriods"), "{e}");
    assert!(check_trigger("aws-cloudwatch", &m, Some("Utilization"), aws().as_ref()).is_err());
    assert!(check_trigger("aws-cloudwatch", &m, Some("Value"), aws().as_ref()).is_ok());
}

#[test]
fn prometheus_cases_from_keda() {
    let base = [
        ("serverAddress", "http://localhost:9090"),
        ("query", "sum(rate(http_requests_total[2m]))"),
        ("threshold", "100"),
    ];
    let ok = |extra: &[(&str, &str)], without: &[&str]| {
        let mut m = md(&base);
        for k in without {
            m.remove(*k);
        }
        m.extend(md(extra));
        check_trigger("prometheus", &m, None, None)
    };
    assert!(ok(&[], &[]).is_ok());
    assert!(ok(&[("activationThreshold", "12")], &[]).is_ok());
    assert!(ok(&[("threshold", "0.5")], &[]).is_ok());
    assert!(ok(&[("ignoreNullValues", "false")], &[]).is_ok());
    assert!(ok(&[("unsafeSsl", "true")], &[]).is_ok());
    assert!(ok(&[], &["serverAddress"]).is_err());
    assert!(ok(&[], &["query"]).is_err());
    assert!(ok(&[], &["threshold"]).is_err());
    assert!(ok(&[("threshold", "one")], &[]).is_err());
    assert!(ok(&[("threshold", "0")], &[]).is_err());
    assert!(ok(&[("activationThreshold", "x")], &[]).is_err());
    assert!(ok(&[("ignoreNullValues", "xxxx")], &[]).is_err());
    assert!(ok(&[("serverAddress", "localhost:9090")], &[]).is_err());
    let e = ok(&[("threshhold", "1")], &[]).expect_err("typo");
    assert!(e.contains("threshhold"));
}

#[test]
fn typed_metadata_builds_maps_keda_accepts() {
    let p = PrometheusMetadata {
        server_address: "http://prom:9090".into(),
        query: anyaccel_metrics::backlog_query("g5"),
        threshold: 2.5,
    };
    let m = p.to_map();
    assert_eq!(m["threshold"], "2.5");
    check_trigger("prometheus", &m, Some("AverageValue"), None).expect("prometheus");

    let c = CloudWatchMetadata {
        metric: CloudWatchMetric::Dimensions {
            namespace: "anyaccel".into(),
            metric_name: "BacklogSeconds".into(),
            dimensions: vec![
                ("Pool".into(), "g5".into()),
                ("Model".into(), "acme/sd".into()),
            ],
        },
        aws_region: "us-west-2".into(),
        metric_stat: "Average".into(),
        metric_stat_period: 60,
        metric_collection_time: 120,
        metric_end_time_offset: 30,
        target_metric_value: 4.0,
        min_metric_value: 0.0,
    };
    let m = c.to_map();
    assert_eq!(m["dimensionName"], "Pool;Model");
    assert_eq!(m["dimensionValue"], "g5;acme/sd");
    assert_eq!(m["targetMetricValue"], "4");
    assert_eq!(m["metricEndTimeOffset"], "30");
    check_trigger("aws-cloudwatch", &m, Some("Value"), aws().as_ref()).expect("cloudwatch");
    let e = CloudWatchMetadata {
        metric: CloudWatchMetric::Expression("SELECT AVG(BacklogSeconds) FROM anyaccel".into()),
        ..c
    };
    check_trigger("aws-cloudwatch", &e.to_map(), None, aws().as_ref()).expect("expression");
}

#[test]
fn cloudwatch_needs_aws_pod_identity_not_just_any_authentication() {
    let m = sqs_with(&[], &[]);
    let e = check_trigger("aws-cloudwatch", &m, None, secrets(&["password"]).as_ref())
        .expect_err("no pod identity");
    assert!(e.contains("podIdentity.provider aws"), "{e}");
}

fn redis(
    m: &BTreeMap<String, String>,
    auth: Option<&TriggerAuthenticationSpec>,
) -> Result<(), String> {
    check_trigger("redis-streams", m, None, auth)
}

#[test]
fn redis_streams_cases_from_keda() {
    let user_password = secrets(&["username", "password"]);
    // KEDA's TestParseRedisStreamsMetadata (pending and lag modes), where
    // credentials come from the container's env or from auth params.
    let valid: Vec<(
        BTreeMap<String, String>,
        Option<TriggerAuthenticationSpec>,
        &str,
    )> = vec![
        (
            md(&[
                ("stream", "my-stream"),
                ("consumerGroup", "my-stream-consumer-group"),
                ("pendingEntriesCount", "5"),
                ("addressFromEnv", "REDIS_SERVICE"),
                ("usernameFromEnv", "REDIS_USERNAME"),
                ("passwordFromEnv", "REDIS_PASSWORD"),
                ("databaseIndex", "0"),
                ("enableTLS", "true"),
            ]),
            None,
            "pending, with address",
        ),
        (
            md(&[
                ("stream", "my-stream"),
                ("consumerGroup", "my-stream-consumer-group"),
                ("pendingEntriesCount", "15"),
                ("hostFromEnv", "REDIS_HOST"),
                ("port", "REDIS_PORT"),
                ("usernameFromEnv", "REDIS_USERNAME"),
                ("passwordFromEnv", "REDIS_PASSWORD"),
                ("databaseIndex", "0"),
                ("enableTLS", "false"),
            ]),
            user_password.clone(),
            "pending, with host and port",
        ),
        (
            md(&[
                ("stream", "my-stream"),
                ("consumerGroup", "my-stream-consumer-group"),
                ("lagCount", "5"),
                ("activationLagCount", "3"),
                ("addressFromEnv", "REDIS_SERVICE"),
                ("usernameFromEnv", "REDIS_USERNAME"),
                ("passwordFromEnv", "REDIS_PASSWORD"),
                ("databaseIndex", "0"),
                ("enableTLS", "true"),
            ]),
            None,
            "lag, with address",
        ),
        (
            md(&[
                ("stream", "my-stream"),
                ("consumerGroup", "my-stream-consumer-group"),
                ("lagCount", "2"),
                ("activationLagCount", "3"),
                ("hostFromEnv", "REDIS_HOST"),
                ("port", "REDIS_PORT"),
                ("usernameFromEnv", "REDIS_USERNAME"),
                ("passwordFromEnv", "REDIS_PASSWORD"),
                ("databaseIndex", "0"),
                ("enableTLS", "false"),
            ]),
            user_password.clone(),
            "lag, with host and port",
        ),
    ];
    for (m, auth, what) in &valid {
        assert!(
            redis(m, auth.as_ref()).is_ok(),
            "{what}: {:?}",
            redis(m, auth.as_ref())
        );
    }

    // KEDA's TestParseRedisStreamsMetadataForInvalidCases. The password
    // comes from auth params here, so each fails for KEDA's reason.
    let pw = secrets(&["password"]);
    let base = [
        ("stream", "my-stream"),
        ("consumerGroup", "my-stream-consumer-group"),
    ];
    // (metadata, what the error says, KEDA's description)
    type Case<'a> = (Vec<(&'a str, &'a str)>, &'a str, &'a str);
    let invalid: Vec<Case> = vec![
        (
            vec![
                ("stream", "my-stream"),
                ("pendingEntriesCount", "5"),
                ("lagCount", "5"),
                ("consumerGroup", "g"),
            ],
            "no addresses or hosts",
            "missing address as well as host/port",
        ),
        (
            vec![
                ("stream", "my-stream"),
                ("lagCount", "5"),
                ("consumerGroup", "g"),
                ("host", "REDIS_HOST"),
            ],
            "no addresses or hosts",
            "host present but missing port",
        ),
        (
            vec![
                ("stream", "my-stream"),
                ("lagCount", "5"),
                ("consumerGroup", "g"),
                ("port", "REDIS_PORT"),
            ],
            "no addresses or hosts",
            "port present but missing host",
        ),
        (
            vec![
                ("pendingEntriesCount", "5"),
                ("consumerGroup", "g"),
                ("address", "redis:6379"),
            ],
            "missing redis stream name",
            "missing stream",
        ),
        (
            [
                &base[..],
                &[
                    ("pendingEntriesCount", "5"),
                    ("lagCount", "junk"),
                    ("host", "h"),
                    ("port", "6379"),
                ],
            ]
            .concat(),
            "lagCount",
            "invalid lag",
        ),
        (
            [
                &base[..],
                &[
                    ("pendingEntriesCount", "junk"),
                    ("host", "h"),
                    ("port", "6379"),
                ],
            ]
            .concat(),
            "pendingEntriesCount",
            "invalid pendingEntriesCount",
        ),
        (
            vec![
                ("stream", "my-stream"),
                ("streamLength", "junk"),
                ("host", "h"),
                ("port", "6379"),
            ],
            "streamLength",
            "invalid streamLength",
        ),
        (
            [
                &base[..],
                &[
                    ("pendingEntriesCount", "15"),
                    ("address", "redis:6379"),
                    ("databaseIndex", "junk"),
                ],
            ]
            .concat(),
            "databaseIndex",
            "invalid databaseIndex",
        ),
        (
            [
                &base[..],
                &[
                    ("pendingEntriesCount", "15"),
                    ("address", "redis:6379"),
                    ("enableTLS", "no"),
                ],
            ]
            .concat(),
            "EnableTLS",
            "invalid enableTLS",
        ),
        // KEDA's cluster-streams cases that apply to one Redis too.
        (
            vec![
                ("stream", "my-stream"),
                ("hosts", "a, b, c"),
                ("ports", "1, 2"),
            ],
            "number of hosts should be equal",
            "unequal number of hosts/ports",
        ),
    ];
    for (pairs, says, what) in invalid {
        let e = redis(&md(&pairs), pw.as_ref()).expect_err(what);
        assert!(e.contains(says), "{what}: {e}");
    }
    // KEDA also takes every mode's own default target: no group scales on
    // the stream length (default 5), a group without lagCount on pending
    // entries (default 5).
    assert!(
        redis(
            &md(&[("stream", "s"), ("address", "redis:6379")]),
            pw.as_ref()
        )
        .is_ok()
    );
    assert!(
        redis(
            &md(&[
                ("stream", "s"),
                ("consumerGroup", "g"),
                ("address", "redis:6379")
            ]),
            pw.as_ref()
        )
        .is_ok()
    );
}

#[test]
fn redis_streams_rules_of_this_renderer() {
    let pw = secrets(&["password"]);
    let lag = |extra: &[(&str, &str)], without: &[&str]| {
        let mut m = md(&[
            ("address", "redis.cache:6379"),
            ("stream", "anyaccel:queue:{sd15}:jobs"),
            ("consumerGroup", "replicas"),
            ("lagCount", "4"),
        ]);
        for k in without {
            m.remove(*k);
        }
        m.extend(md(extra));
        m
    };
    assert!(redis(&lag(&[], &[]), pw.as_ref()).is_ok());
    assert!(
        redis(
            &lag(&[("enableTLS", "true"), ("databaseIndex", "2")], &[]),
            pw.as_ref()
        )
        .is_ok()
    );
    // Credentials: from a Secret, never in plain text, and required.
    let e = redis(&lag(&[("password", "hunter2")], &[]), pw.as_ref()).expect_err("plain text");
    assert!(e.contains("plain text"), "{e}");
    let e = redis(&lag(&[], &[]), None).expect_err("no password");
    assert!(e.contains("secretTargetRef for parameter password"), "{e}");
    assert!(redis(&lag(&[], &[]), secrets(&["username"]).as_ref()).is_err());
    // KEDA refuses TLS set in both places.
    let e = redis(
        &lag(&[("enableTLS", "true")], &[]),
        secrets(&["password", "tls"]).as_ref(),
    )
    .expect_err("tls twice");
    assert!(e.contains("both"), "{e}");
    // The HPA takes only a positive target; lagCount 0 means pending mode,
    // no group the stream's length.
    assert!(
        redis(
            &lag(&[("streamLength", "4")], &["consumerGroup", "lagCount"]),
            pw.as_ref()
        )
        .is_ok()
    );
    let e = redis(
        &lag(&[("streamLength", "0")], &["consumerGroup"]),
        pw.as_ref(),
    )
    .expect_err("zero length");
    assert!(e.contains("streamLength must be positive"), "{e}");
    for (extra, says) in [
        (vec![("lagCount", "-1")], "lagCount must be positive"),
        (
            vec![("lagCount", "0"), ("pendingEntriesCount", "0")],
            "pendingEntriesCount must be positive",
        ),
        (vec![("lagCount", "1.5")], "lagCount"),
        (vec![("lagCount", "04")], "lagCount"),
        (vec![("databaseIndex", "-1")], "databaseIndex"),
        (vec![("address", "redis.cache")], "not host:port"),
        (vec![("address", "redis.cache:0")], "not host:port"),
        (vec![("unsafeSsl", "sure")], "unsafeSsl"),
        (vec![("lagcount", "4")], "unexpected parameter \"lagcount\""),
    ] {
        let e = redis(&lag(&extra, &[]), pw.as_ref()).expect_err(says);
        assert!(e.contains(says), "{extra:?}: {e}");
    }
    assert!(
        check_trigger(
            "redis-streams",
            &lag(&[], &[]),
            Some("Utilization"),
            pw.as_ref()
        )
        .is_err()
    );
    assert!(
        check_trigger(
            "redis-streams",
            &lag(&[], &[]),
            Some("AverageValue"),
            pw.as_ref()
        )
        .is_ok()
    );
}

#[test]
fn typed_redis_metadata_builds_maps_keda_accepts() {
    let r = RedisStreamsMetadata {
        address: "redis.cache:6379".into(),
        stream: "anyaccel:queue:{sd15}:jobs".into(),
        stream_length: 4,
        enable_tls: false,
        database_index: 0,
    };
    let m = r.to_map();
    assert_eq!(
        m.keys().map(String::as_str).collect::<Vec<_>>(),
        ["address", "stream", "streamLength"],
        "no consumer group (KEDA would read its lag or pending entries); defaults (no TLS, database 0) left to KEDA"
    );
    assert_eq!(m["streamLength"], "4");
    let pw = secrets(&["password"]);
    check_trigger("redis-streams", &m, Some("AverageValue"), pw.as_ref()).expect("plain");
    let tls = RedisStreamsMetadata {
        enable_tls: true,
        database_index: 3,
        ..r
    }
    .to_map();
    assert_eq!(tls["enableTLS"], "true");
    assert_eq!(tls["databaseIndex"], "3");
    check_trigger("redis-streams", &tls, Some("AverageValue"), pw.as_ref()).expect("tls");
}
