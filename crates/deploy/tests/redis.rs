//! `[redis]`: the servers' shared job queues, and the pools scaling on
//! their length with KEDA's `redis-streams` trigger.

mod support;

use anyaccel_deploy::{
    ClusterConfig, REDIS_PASSWORD_ENV, REDIS_QUEUE_ENV, REDIS_TRIGGER_AUTHENTICATION,
    REDIS_URL_ENV, RenderedObject, redis_stream_key, render,
};
use serde_json::{Value, json};
use support::{MINIMAL, find, of_kind};

const REDIS: &str = r#"
[redis]
endpoint = "redis.cache.svc.cluster.local:6379"
password_secret = "redis-auth"
"#;

fn with_redis(redis: &str) -> Vec<RenderedObject> {
    support::render_str(&format!("{MINIMAL}{redis}"))
}

fn server(objs: &[RenderedObject], pool: &str) -> Value {
    find(objs, "Deployment", &format!("anyaccel-{pool}")).value()["spec"]["template"]["spec"]
        ["containers"][0]
        .clone()
}

fn env<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
}

fn triggers(objs: &[RenderedObject], pool: &str) -> Vec<Value> {
    find(objs, "ScaledObject", &format!("anyaccel-{pool}")).value()["spec"]["triggers"]
        .as_array()
        .expect("triggers")
        .clone()
}

fn redis_trigger(objs: &[RenderedObject], pool: &str) -> Value {
    triggers(objs, pool)
        .into_iter()
        .find(|t| t["type"] == "redis-streams")
        .unwrap_or_else(|| panic!("{pool} has no redis-streams trigger"))
}

fn stream_length(objs: &[RenderedObject], pool: &str) -> u64 {
    redis_trigger(objs, pool)["metadata"]["streamLength"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .expect("streamLength")
}

#[test]
fn every_server_gets_the_url_the_password_and_its_models_queue() {
    let objs = with_redis(REDIS);
    for (pool, queue) in [("cpu", "sd-fp32"), ("gpu", "sd-fp16")] {
        let c = server(&objs, pool);
        assert_eq!(
            env(&c, REDIS_URL_ENV).map(|e| &e["value"]),
            Some(&json!("redis://redis.cache.svc.cluster.local:6379"))
        );
        assert_eq!(
            env(&c, REDIS_PASSWORD_ENV).map(|e| &e["valueFrom"]),
            Some(
                &json!({"secretKeyRef": {"name": "redis-auth", "key": "password", "optional": false}})
            ),
            "the password comes from the Secret, never as a value"
        );
        assert!(env(&c, REDIS_PASSWORD_ENV).is_some_and(|e| e["value"].is_null()));
        // The queue is the artifact the pool serves.
        assert_eq!(
            env(&c, REDIS_QUEUE_ENV).map(|e| &e["value"]),
            Some(&json!(queue))
        );
    }
    // The fleet controller takes no jobs.
    let controller = find(&objs, "Deployment", "anyaccel-fleet").value()["spec"]["template"]
        ["spec"]["containers"][0]
        .clone();
    assert!(env(&controller, REDIS_URL_ENV).is_none());
}

#[test]
fn pools_serving_one_artifact_share_its_queue() {
    let objs = support::seed();
    let queue = |pool: &str| {
        env(&server(&objs, pool), REDIS_QUEUE_ENV)
            .and_then(|e| e["value"].as_str().map(String::from))
    };
    assert_eq!(queue("g5").as_deref(), Some("sd15-fp16"));
    assert_eq!(queue("g5"), queue("g6"));
    assert_eq!(queue("inf2").as_deref(), Some("sd15-neuron"));
    assert_eq!(
        redis_trigger(&objs, "g5")["metadata"]["stream"],
        redis_trigger(&objs, "g6")["metadata"]["stream"]
    );
}

#[test]
fn one_trigger_authentication_serves_every_pool() {
    let objs = with_redis(&REDIS.replace(
        "password_secret = \"redis-auth\"",
        "password_secret = \"redis-auth\"\npassword_key = \"redis-password\"",
    ));
    let tas = of_kind(&objs, "TriggerAuthentication");
    assert_eq!(tas.len(), 1, "one per fleet, whatever the pool count");
    let ta = tas[0];
    assert_eq!(ta.name(), REDIS_TRIGGER_AUTHENTICATION);
    assert_eq!(ta.namespace(), Some("anyaccel"));
    assert_eq!(
        ta.value()["spec"],
        json!({"secretTargetRef": [{"parameter": "password", "name": "redis-auth", "key": "redis-password"}]})
    );
    let r = support::schema::validate_object(ta.value());
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    // Applied before the ScaledObjects that reference it.
    let at = |kind: &str, name: &str| {
        objs.iter()
            .position(|o| o.kind() == kind && o.name() == name)
            .expect("rendered")
    };
    for pool in ["cpu", "gpu"] {
        assert!(
            at("TriggerAuthentication", ta.name())
                < at("ScaledObject", &format!("anyaccel-{pool}"))
        );
        let t = redis_trigger(&objs, pool);
        assert_eq!(
            t["authenticationRef"],
            json!({"name": REDIS_TRIGGER_AUTHENTICATION, "kind": "TriggerAuthentication"})
        );
        // Same key as the servers read.
        assert_eq!(
            env(&server(&objs, pool), REDIS_PASSWORD_ENV)
                .map(|e| &e["valueFrom"]["secretKeyRef"]["key"]),
            Some(&json!("redis-password"))
        );
    }
}

#[test]
fn the_redis_trigger_sits_next_to_the_backlog_trigger() {
    let objs = with_redis(REDIS);
    for pool in ["cpu", "gpu"] {
        let ts = triggers(&objs, pool);
        let kinds: Vec<&str> = ts.iter().filter_map(|t| t["type"].as_str()).collect();
        assert_eq!(kinds, ["prometheus", "redis-streams"]);
        let names: std::collections::BTreeSet<&str> =
            ts.iter().filter_map(|t| t["name"].as_str()).collect();
        assert_eq!(names.len(), ts.len(), "KEDA wants unique trigger names");
        let t = &ts[1];
        assert_eq!(
            t["metadata"],
            json!({
                "address": "redis.cache.svc.cluster.local:6379",
                "stream": redis_stream_key(if pool == "cpu" { "sd-fp32" } else { "sd-fp16" }),
                "streamLength": "4",
            })
        );
        assert_eq!(t["metricType"], "AverageValue");
        // Read afresh at every HPA sync; the backlog trigger keeps its cache.
        assert!(t["useCachedMetrics"].is_null());
        assert_eq!(ts[0]["useCachedMetrics"], true);
    }
    assert_eq!(redis_stream_key("sd-fp16"), "anyaccel:queue:{sd-fp16}:jobs");
}

#[test]
fn tls_and_database_reach_the_url_and_the_trigger() {
    let objs = with_redis(&REDIS.replace(
        "endpoint = \"redis.cache.svc.cluster.local:6379\"",
        "endpoint = \"10.0.12.7:6380\"\ntls = true\ndatabase = 2",
    ));
    let c = server(&objs, "gpu");
    assert_eq!(
        env(&c, REDIS_URL_ENV).map(|e| &e["value"]),
        Some(&json!("rediss://10.0.12.7:6380/2"))
    );
    let md = &redis_trigger(&objs, "gpu")["metadata"];
    assert_eq!(md["address"], "10.0.12.7:6380");
    assert_eq!(md["enableTLS"], "true");
    assert_eq!(md["databaseIndex"], "2");

    // A rediss:// URL says TLS itself; the port defaults to 6379.
    let objs = with_redis(&REDIS.replace(
        "redis.cache.svc.cluster.local:6379",
        "rediss://master.jobs.abc123.usw2.cache.amazonaws.com",
    ));
    assert_eq!(
        env(&server(&objs, "cpu"), REDIS_URL_ENV).map(|e| &e["value"]),
        Some(&json!(
            "rediss://master.jobs.abc123.usw2.cache.amazonaws.com:6379"
        ))
    );
    let md = &redis_trigger(&objs, "cpu")["metadata"];
    assert_eq!(
        md["address"],
        "master.jobs.abc123.usw2.cache.amazonaws.com:6379"
    );
    assert_eq!(md["enableTLS"], "true");
    assert!(md["databaseIndex"].is_null());

    // IPv6 keeps its brackets in both.
    let objs = with_redis(&REDIS.replace("redis.cache.svc.cluster.local:6379", "[fd00::12]:6379"));
    assert_eq!(
        env(&server(&objs, "cpu"), REDIS_URL_ENV).map(|e| &e["value"]),
        Some(&json!("redis://[fd00::12]:6379"))
    );
    assert_eq!(
        redis_trigger(&objs, "cpu")["metadata"]["address"],
        "[fd00::12]:6379"
    );
}

/// Two NVIDIA pools on one artifact (so one queue) and a CPU pool alone.
fn shared_queue(weights: (u32, u32), extra: &str) -> String {
    format!(
        r#"
[cluster]
name = "test"

[image]
repository = "registry.example.com/anyaccel"
[image.tags]
cpu-amd64 = "1.0"
nvidia = "1.0-cuda"

[scaling]
trigger = "prometheus"
server_address = "http://prometheus.monitoring:9090"

[redis]
endpoint = "redis:6379"
password_secret = "redis-auth"

[[artifacts]]
name = "sd-fp16"
target = "onnx-fp16"
repo = "acme/sd-fp16"

[[artifacts]]
name = "sd-fp32"
target = "onnx-fp32"
repo = "acme/sd-fp32"

[[pools]]
name = "g5"
accelerator = "nvidia"
instance_families = ["g5"]
min_replicas = 1
max_replicas = 10
artifact = "sd-fp16"
latency_slo_secs = 10
weight = {}
{extra}

[[pools]]
name = "g6"
accelerator = "nvidia"
instance_families = ["g6"]
min_replicas = 1
max_replicas = 10
artifact = "sd-fp16"
latency_slo_secs = 10
weight = {}

[[pools]]
name = "cpu"
accelerator = "cpu-amd64"
instance_families = ["c7i"]
min_replicas = 1
max_replicas = 10
artifact = "sd-fp32"
latency_slo_secs = 60
weight = 10
"#,
        weights.0, weights.1
    )
}

#[test]
fn pools_sharing_a_queue_split_its_length_by_weight() {
    // g5 takes a third of sd-fp16's traffic, g6 two thirds: with 4 jobs per
    // replica overall, g5 runs a replica per 12 and g6 per 6, so together
    // they ask for length / 4 replicas, not twice that.
    let objs = support::render_str(&shared_queue((30, 60), ""));
    assert_eq!(stream_length(&objs, "g5"), 12);
    assert_eq!(stream_length(&objs, "g6"), 6);
    // Alone on its queue: the target itself.
    assert_eq!(stream_length(&objs, "cpu"), 4);
    // Rounded to the nearest job: 4 * 75 / 45 = 6.67.
    let objs = support::render_str(&shared_queue((30, 45), ""));
    assert_eq!(
        (stream_length(&objs, "g5"), stream_length(&objs, "g6")),
        (10, 7)
    );
    // Even mode splits evenly.
    let even = shared_queue((30, 60), "").replacen(
        "[scaling]",
        "[ingress]\nmode = \"even\"\n\n[scaling]",
        1,
    );
    let objs = support::render_str(&even);
    assert_eq!(
        (stream_length(&objs, "g5"), stream_length(&objs, "g6")),
        (8, 8)
    );
    // A pool's own target, still divided by its share.
    let objs = support::render_str(&shared_queue((30, 60), "target_redis_jobs = 2"));
    assert_eq!(
        (stream_length(&objs, "g5"), stream_length(&objs, "g6")),
        (6, 6)
    );
}

#[test]
fn the_jobs_target_defaults_to_the_pools_batch() {
    let cfg = ClusterConfig::from_toml_str(&format!("{MINIMAL}{REDIS}")).expect("valid");
    // The servers' --max-batch default.
    assert!(cfg.pools().iter().all(|p| p.redis_jobs_target() == Some(4)));
    // A Neuron artifact runs one compiled batch of one image.
    let objs = support::seed();
    assert_eq!(stream_length(&objs, "inf2"), 1);
    // g5 and g6 share sd15-fp16 at weights 30 and 45.
    assert_eq!(
        (stream_length(&objs, "g5"), stream_length(&objs, "g6")),
        (10, 7)
    );
    let cfg = ClusterConfig::from_toml_str(MINIMAL).expect("valid");
    assert!(cfg.pools().iter().all(|p| p.redis_jobs_target().is_none()));
}

#[test]
fn without_redis_nothing_is_rendered_for_it() {
    let objs = render(&ClusterConfig::from_toml_str(MINIMAL).expect("valid")).expect("render");
    assert!(of_kind(&objs, "TriggerAuthentication").is_empty());
    for pool in ["cpu", "gpu"] {
        assert!(
            triggers(&objs, pool)
                .iter()
                .all(|t| t["type"] != "redis-streams")
        );
        let c = server(&objs, pool);
        for name in [REDIS_URL_ENV, REDIS_PASSWORD_ENV, REDIS_QUEUE_ENV] {
            assert!(env(&c, name).is_none(), "{pool}: {name}");
        }
    }
}

#[test]
fn the_stream_name_survives_the_yaml() {
    let yaml = anyaccel_deploy::to_yaml_stream(&support::seed());
    let docs: Vec<Value> = yaml
        .split("---\n")
        .filter(|d| !d.trim().is_empty())
        .map(|d| serde_norway::from_str(d).expect("yaml"))
        .collect();
    let streams: Vec<&str> = docs
        .iter()
        .filter(|d| d["kind"] == "ScaledObject")
        .flat_map(|d| d["spec"]["triggers"].as_array().into_iter().flatten())
        .filter(|t| t["type"] == "redis-streams")
        .filter_map(|t| t["metadata"]["stream"].as_str())
        .collect();
    assert_eq!(
        streams,
        [
            "anyaccel:queue:{sd15-fp16}:jobs",
            "anyaccel:queue:{sd15-fp16}:jobs",
            "anyaccel:queue:{sd15-neuron}:jobs"
        ]
    );
}
