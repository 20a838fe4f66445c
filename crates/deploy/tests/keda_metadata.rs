//! Trigger metadata checks, on cases modelled after KEDA v2.20's own scaler
//! tests (`pkg/scalers/prometheus_scaler_test.go`,
//! `aws_cloudwatch_scaler_test.go`): the same inputs must pass or fail here
//! as they do in KEDA.

use std::collections::BTreeMap;

use anyaccel_deploy::keda::{
    CloudWatchMetadata, CloudWatchMetric, PrometheusMetadata, check_trigger,
};

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
    check_trigger("aws-cloudwatch", m, None, true)
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
    assert!(check_trigger("aws-cloudwatch", &m, None, false).is_err());
    let typo = sqs_with(&[("metricStatPeriods", "60")], &[]);
    let e = cw(&typo).expect_err("typo");
    assert!(e.contains("metricStatPeriods"), "{e}");
    assert!(check_trigger("aws-cloudwatch", &m, Some("Utilization"), true).is_err());
    assert!(check_trigger("aws-cloudwatch", &m, Some("Value"), true).is_ok());
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
        check_trigger("prometheus", &m, None, false)
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
    check_trigger("prometheus", &m, Some("AverageValue"), false).expect("prometheus");

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
    check_trigger("aws-cloudwatch", &m, Some("Value"), true).expect("cloudwatch");
    let e = CloudWatchMetadata {
        metric: CloudWatchMetric::Expression("SELECT AVG(BacklogSeconds) FROM anyaccel".into()),
        ..c
    };
    check_trigger("aws-cloudwatch", &e.to_map(), None, true).expect("expression");
}
