//! Configs that cannot work fail before anything is rendered, with a
//! message that names the field.

mod support;

use anyaccel_deploy::{ClusterConfig, DeployError};
use support::MINIMAL;

/// MINIMAL with `from` replaced by `to` (which must occur).
fn edit(from: &str, to: &str) -> String {
    assert!(MINIMAL.contains(from), "MINIMAL has no {from:?}");
    MINIMAL.replacen(from, to, 1)
}

fn problems(toml: &str) -> Vec<String> {
    match ClusterConfig::from_toml_str(toml) {
        Ok(_) => panic!("config was accepted:\n{toml}"),
        Err(e @ DeployError::Invalid { .. }) => {
            // The Display lists every problem.
            let shown = e.to_string();
            for p in e.problems() {
                assert!(shown.contains(p.as_str()));
            }
            e.problems().to_vec()
        }
        Err(other) => vec![other.to_string()],
    }
}

fn assert_problem(toml: &str, expected: &[&str]) {
    let ps = problems(toml);
    assert!(
        ps.iter().any(|p| expected.iter().all(|e| p.contains(e))),
        "expected a problem containing {expected:?}, got:\n  {}",
        ps.join("\n  ")
    );
}

#[test]
fn minimal_config_is_valid() {
    let cfg = ClusterConfig::from_toml_str(MINIMAL).expect("valid");
    assert_eq!(cfg.pools().len(), 2);
    assert_eq!(cfg.namespace(), "anyaccel");
    // Backlog target defaults to half the SLO.
    assert_eq!(cfg.pools()[1].scale_target(), 5.0);
}

#[test]
fn unknown_accelerator_lists_the_allowed_kinds() {
    assert_problem(
        &edit("accelerator = \"nvidia\"", "accelerator = \"tpu\""),
        &[
            "pools[1].accelerator",
            "\"tpu\"",
            "cpu-amd64, cpu-arm64, nvidia, neuron",
        ],
    );
    assert_problem(
        &edit(
            "nvidia = \"1.0-cuda\"",
            "nvidia = \"1.0-cuda\"\ntpu = \"x\"",
        ),
        &["image.tags.tpu", "allowed: cpu-amd64"],
    );
}

#[test]
fn max_below_min_names_both_values() {
    let toml = MINIMAL.replacen(
        "min_replicas = 1\nmax_replicas = 4",
        "min_replicas = 3\nmax_replicas = 2",
        2,
    );
    let ps = problems(&toml);
    assert!(
        ps.contains(&"pools[0].max_replicas (2) is below min_replicas (3)".to_string()),
        "{ps:?}"
    );
    assert!(
        ps.contains(&"pools[1].max_replicas (2) is below min_replicas (3)".to_string()),
        "{ps:?}"
    );
}

#[test]
fn zero_min_replicas_is_refused_with_the_reason() {
    assert_problem(
        &edit("min_replicas = 1", "min_replicas = 0"),
        &["pools[0].min_replicas (0)", "ALB"],
    );
}

#[test]
fn missing_image_tag_for_a_used_kind() {
    assert_problem(
        &edit("nvidia = \"1.0-cuda\"\n", ""),
        &["image.tags.nvidia is missing", "pools[1] (gpu)"],
    );
    assert_problem(
        &edit("repository = \"registry.example.com/anyaccel\"\n", ""),
        &["image.repository is required"],
    );
    assert_problem(
        &edit(
            "registry.example.com/anyaccel",
            "registry.example.com/anyaccel:1.0",
        ),
        &["image.repository", "tags go in [image.tags]"],
    );
    assert_problem(
        &edit("\"1.0-cuda\"", "\"-bad tag\""),
        &["image.tags.nvidia", "not a valid image tag"],
    );
}

#[test]
fn duplicate_pool_names() {
    assert_problem(
        &edit("name = \"gpu\"", "name = \"cpu\""),
        &["pools[1].name", "duplicate pool name \"cpu\"", "pools[0]"],
    );
    assert_problem(
        &edit("name = \"sd-fp16\"", "name = \"sd-fp32\""),
        &["artifacts[1].name", "duplicate artifact name"],
    );
}

#[test]
fn unknown_keys_are_rejected_with_their_line() {
    let e = ClusterConfig::from_toml_str(&edit("max_replicas = 4", "max_replica = 4"))
        .expect_err("typo");
    let msg = e.to_string();
    assert!(msg.contains("max_replica") && msg.contains("line"), "{msg}");
    let e = ClusterConfig::from_toml_str("[cluster\nname=1").expect_err("syntax");
    assert!(matches!(e, DeployError::Parse { .. }), "{e}");
}

#[test]
fn weights_are_required_and_bounded_in_cost_mode() {
    assert_problem(
        &edit("weight = 90\n", ""),
        &["pools[1].weight is required", "cost-weighted"],
    );
    assert_problem(
        &edit("weight = 90", "weight = 1000"),
        &["pools[1].weight (1000)", "1..=999"],
    );
    assert_problem(&edit("weight = 10", "weight = 0"), &["pools[0].weight (0)"]);
    // Even mode ignores them.
    let even = edit("mode = \"cost-weighted\"", "mode = \"even\"").replace("weight = 90\n", "");
    ClusterConfig::from_toml_str(&even).expect("even mode needs no weights");
    assert_problem(
        &edit("mode = \"cost-weighted\"", "mode = \"cheapest\""),
        &["ingress.mode", "cost-weighted, even"],
    );
}

#[test]
fn too_many_pools_for_one_alb_action() {
    let mut toml = edit("mode = \"cost-weighted\"", "mode = \"even\"");
    for i in 0..4 {
        toml.push_str(&format!(
            "\n[[pools]]\nname = \"extra{i}\"\naccelerator = \"cpu-amd64\"\ninstance_families = [\"c7i\"]\nmin_replicas = 1\nmax_replicas = 2\nartifact = \"sd-fp32\"\nlatency_slo_secs = 30\n"
        ));
    }
    assert_problem(&toml, &["6 pools given", "at most 5"]);
}

#[test]
fn artifacts_must_exist_and_suit_the_hardware() {
    assert_problem(
        &edit("artifact = \"sd-fp16\"", "artifact = \"sd-xl\""),
        &[
            "pools[1].artifact \"sd-xl\" names no [[artifacts]] entry",
            "sd-fp16, sd-fp32",
        ],
    );
    assert_problem(
        &edit("artifact = \"sd-fp32\"", "artifact = \"sd-fp16\""),
        &[
            "pools[0].artifact",
            "onnx-fp16",
            "cpu-amd64 pools cannot run",
        ],
    );
    // int8 (dynamic quantization) has CPU kernels only.
    assert_problem(
        &edit("target = \"onnx-fp16\"", "target = \"onnx-int8\""),
        &["pools[1].artifact", "onnx-int8", "nvidia pools cannot run"],
    );
    // OpenVINO's ONNX Runtime build exists for x86_64 CPUs only.
    assert_problem(
        &edit("target = \"onnx-fp16\"", "target = \"onnx-openvino\""),
        &[
            "pools[1].artifact",
            "onnx-openvino",
            "nvidia pools cannot run",
        ],
    );
    assert_problem(
        &edit("target = \"onnx-fp32\"", "target = \"onnx-openvino\"")
            .replace("accelerator = \"cpu-amd64\"", "accelerator = \"cpu-arm64\""),
        &[
            "pools[0].artifact",
            "onnx-openvino",
            "cpu-arm64 pools cannot run",
        ],
    );
    assert_problem(
        &edit("target = \"onnx-fp32\"", "target = \"onnx-int4\""),
        &[
            "artifacts[0].target",
            "onnx-fp32, onnx-int8, onnx-openvino, onnx-fp16, neuron",
        ],
    );
    // A compile Job pushes, which needs a token.
    assert_problem(
        &edit(
            "target = \"onnx-fp32\"",
            "target = \"onnx-fp32\"\nsource = \"org/model\"",
        ),
        &["cluster.hub_token_secret is required"],
    );
    // An artifact nobody serves is a mistake.
    let unused = format!(
        "{MINIMAL}\n[[artifacts]]\nname = \"spare\"\ntarget = \"neuron\"\nrepo = \"a/b\"\n"
    );
    assert_problem(&unused, &["artifacts[2] (spare) is not used by any pool"]);
}

#[test]
fn instance_families_must_fit_the_accelerator() {
    assert_problem(
        &edit("[\"g5\"]", "[\"c7i\"]"),
        &[
            "pools[1].instance_families[0] \"c7i\"",
            "not an NVIDIA GPU family",
        ],
    );
    assert_problem(
        &edit("[\"c7i\"]", "[\"c7g\"]"),
        &["pools[0].instance_families[0]", "Graviton", "cpu-arm64"],
    );
    assert_problem(&edit("[\"g5\"]", "[\"g5g\"]"), &["Graviton", "amd64"]);
    assert_problem(
        &edit("instance_families = [\"g5\"]", "instance_types = [\"g5\"]"),
        &["pools[1].instance_types[0] \"g5\"", "family.size"],
    );
    assert_problem(
        &edit(
            "instance_families = [\"g5\"]",
            "instance_families = [\"g5\"]\ninstance_types = [\"g5.xlarge\"]",
        ),
        &["pools[1]: give instance_families or instance_types, not both"],
    );
    assert_problem(
        &edit("instance_families = [\"g5\"]", "instance_families = []"),
        &["pools[1].instance_families must not be empty"],
    );
}

#[test]
fn triggers_are_checked_like_keda_does() {
    assert_problem(
        &edit("server_address = \"http://prometheus.monitoring:9090\"", ""),
        &["scaling.server_address is required"],
    );
    let cw = |period: &str, collection: &str| {
        edit(
            "trigger = \"prometheus\"\nserver_address = \"http://prometheus.monitoring:9090\"",
            &format!("trigger = \"cloudwatch\"\nregion = \"us-west-2\"\n{period}\n{collection}"),
        )
    };
    ClusterConfig::from_toml_str(&cw("", "")).expect("defaults: 60 s period, 120 s window");
    assert_problem(
        &cw("stat_period_secs = 45", ""),
        &["scaling.stat_period_secs", "one of [1, 5, 10, 30]"],
    );
    assert_problem(&cw("stat_period_secs = 90", ""), &["multiple of 60"]);
    assert_problem(
        &cw("stat_period_secs = 60", "collection_time_secs = 90"),
        &[
            "scaling.collection_time_secs",
            "multiple of metricStatPeriod(60)",
        ],
    );
    assert_problem(&cw("", "collection_time_secs = 0"), &["empty query window"]);
    // KEDA allows 30 s, but the servers publish one-minute datapoints.
    assert_problem(
        &cw("stat_period_secs = 30", ""),
        &["scaling.stat_period_secs (30)", "one-minute"],
    );
    assert_problem(
        &cw("publish = \"statsd\"", ""),
        &["scaling.publish \"statsd\"", "api, emf"],
    );
    ClusterConfig::from_toml_str(&cw("stat_period_secs = 120", "publish = \"emf\""))
        .expect("2-minute periods");
    assert_problem(
        &edit(
            "trigger = \"prometheus\"\nserver_address = \"http://prometheus.monitoring:9090\"",
            "trigger = \"cloudwatch\"\nregion = \"mars-1\"",
        ),
        &["scaling.region \"mars-1\" is not an AWS region"],
    );
    assert_problem(
        &edit(
            "trigger = \"prometheus\"",
            "trigger = \"prometheus\"\nregion = \"us-west-2\"",
        ),
        &["scaling.region applies only to trigger = \"cloudwatch\""],
    );
    assert_problem(
        &edit("trigger = \"prometheus\"", "trigger = \"datadog\""),
        &["scaling.trigger \"datadog\"", "prometheus, cloudwatch"],
    );
    // A per-pool override is named as such.
    let per_pool = format!(
        "{}\n[pools.scaling]\ntrigger = \"cloudwatch\"\nregion = \"us-west-2\"\nrole_arn = \"not-an-arn\"\n",
        MINIMAL.trim_end()
    );
    assert_problem(&per_pool, &["pools[1].scaling.role_arn"]);
}

#[test]
fn backlog_target_must_leave_room_under_the_slo() {
    assert_problem(
        &edit(
            "latency_slo_secs = 10",
            "latency_slo_secs = 10\ntarget_backlog_secs = 12",
        ),
        &["pools[1].target_backlog_secs (12) must be below latency_slo_secs (10)"],
    );
    assert_problem(
        &edit(
            "server_address = \"http://prometheus.monitoring:9090\"",
            "server_address = \"http://prometheus.monitoring:9090\"\nsignal = \"queue-depth\"",
        ),
        &["pools[0].target_queue_depth is required"],
    );
}

#[test]
fn resources_and_timeouts_are_validated() {
    assert_problem(
        &edit("weight = 90", "weight = 90\nresources = { cpu = \"lots\" }"),
        &["pools[1].resources.cpu \"lots\""],
    );
    assert_problem(
        &edit("weight = 10", "weight = 10\nresources = { devices = 1 }"),
        &["pools[0].resources.devices (1) applies only to nvidia and neuron pools"],
    );
    assert_problem(
        &edit("weight = 90", "weight = 90\ndrain_timeout_secs = 1"),
        &["pools[1].drain_timeout_secs (1)"],
    );
}

#[test]
fn names_must_be_valid_kubernetes_names() {
    assert_problem(
        &edit("name = \"gpu\"", "name = \"GPU_pool\""),
        &["pools[1].name \"GPU_pool\""],
    );
    assert_problem(
        &edit("name = \"test\"", "name = \"test\"\nnamespace = \"Bad NS\""),
        &["cluster.namespace"],
    );
    let long_ns = edit(
        "name = \"test\"",
        &format!("name = \"test\"\nnamespace = \"{}\"", "n".repeat(40)),
    );
    let long = long_ns.replacen(
        "name = \"gpu\"",
        &format!("name = \"{}\"", "g".repeat(30)),
        1,
    );
    assert_problem(&long, &["NodePool name is 71 characters"]);
}

#[test]
fn all_problems_are_reported_at_once() {
    let toml = edit("accelerator = \"nvidia\"", "accelerator = \"tpu\"")
        .replacen("max_replicas = 4", "max_replicas = 0", 1)
        .replacen("weight = 90", "weight = 5000", 1);
    let ps = problems(&toml);
    assert!(ps.len() >= 3, "{ps:?}");
}

#[test]
fn missing_sections() {
    assert_problem("", &["[cluster] is required"]);
    assert_problem("", &["at least one [[pools]] entry"]);
    let e = ClusterConfig::from_path(std::path::Path::new("/nonexistent/cluster.toml"))
        .expect_err("no file");
    assert!(e.to_string().contains("/nonexistent/cluster.toml"));
}

#[test]
fn pool_sizes_are_checked_against_the_artifact_family() {
    let sdxl = edit(
        "target = \"onnx-fp16\"\nrepo = \"acme/sd-fp16\"",
        "target = \"onnx-fp16\"\nrepo = \"acme/sd-fp16\"\nfamily = \"sdxl\"",
    );
    // Too small for SDXL, though fine for SD 1.x.
    let small = sdxl.replacen(
        "artifact = \"sd-fp16\"",
        "artifact = \"sd-fp16\"\nsizes = [\"1024x1024\", \"256x256\"]",
        1,
    );
    assert_problem(&small, &["pools[1].sizes[1]", "256x256", "SDXL"]);
    let not_a_size = edit(
        "artifact = \"sd-fp32\"",
        "artifact = \"sd-fp32\"\nsizes = [\"512\"]",
    );
    assert_problem(&not_a_size, &["pools[0].sizes[0]", "WIDTHxHEIGHT"]);
    assert_problem(
        &edit(
            "repo = \"acme/sd-fp32\"",
            "repo = \"acme/sd-fp32\"\nfamily = \"kandinsky\"",
        ),
        &[
            "artifacts[0].family",
            "\"kandinsky\"",
            "sd, sdxl, sd3, flux",
        ],
    );
    // The transformers' 2x2 patches want multiples of 16.
    let flux = edit(
        "target = \"onnx-fp16\"\nrepo = \"acme/sd-fp16\"",
        "target = \"onnx-fp16\"\nrepo = \"acme/sd-fp16\"\nfamily = \"flux\"",
    )
    .replacen(
        "artifact = \"sd-fp16\"",
        "artifact = \"sd-fp16\"\nsizes = [\"1024x1024\", \"1000x1000\"]",
        1,
    );
    assert_problem(&flux, &["pools[1].sizes[1]", "1000x1000", "16"]);
    // Unlisted sizes default to the family's: SDXL's buckets around 1024x1024.
    let cfg = ClusterConfig::from_toml_str(&sdxl).expect("valid");
    assert_eq!(cfg.pools()[1].sizes()[0], (1024, 1024));
    assert!(cfg.pools()[1].sizes().len() > 1);
    assert_eq!(cfg.pools()[0].sizes(), &[(512, 512)]);
}

/// MINIMAL with a `[redis]` table of these lines.
fn with_redis(lines: &str) -> String {
    format!("{MINIMAL}\n[redis]\n{lines}\n")
}

#[test]
fn redis_section_is_checked_naming_its_fields() {
    let ok = "endpoint = \"redis:6379\"\npassword_secret = \"redis-auth\"";
    ClusterConfig::from_toml_str(&with_redis(ok)).expect("valid");
    assert_problem(&with_redis(""), &["redis.endpoint is required"]);
    assert_problem(
        &with_redis("endpoint = \"redis:6379\""),
        &["redis.password_secret is required", "redis.password_key"],
    );
    let endpoint = |e: &str| {
        with_redis(&format!(
            "endpoint = {e:?}\npassword_secret = \"redis-auth\""
        ))
    };
    for (bad, says) in [
        ("redis.cache", "has no port"),
        ("redis.cache:99999", "a port is 1..=65535"),
        ("http://redis:6379", "scheme \"http\""),
        (
            "redis://default:hunter2@redis:6379",
            "redis.password_secret",
        ),
        ("redis://redis:6379/2", "redis.database"),
        ("redis://redis_cache:6379", "not a DNS name"),
    ] {
        assert_problem(
            &endpoint(bad),
            &["redis.endpoint", &format!("{bad:?}"), says],
        );
    }
    // A URL's scheme decides TLS; `tls` is for host:port.
    assert_problem(
        &with_redis("endpoint = \"rediss://redis:6379\"\ntls = true\npassword_secret = \"s\""),
        &[
            "redis.tls applies only to a host:port endpoint",
            "rediss://",
        ],
    );
    ClusterConfig::from_toml_str(&with_redis(&format!("{ok}\ntls = true")))
        .expect("tls on host:port");
    assert_problem(
        &with_redis(&format!("{ok}\ndatabase = -1")),
        &["redis.database (-1)"],
    );
    assert_problem(
        &with_redis("endpoint = \"redis:6379\"\npassword_secret = \"Redis_Auth\""),
        &["redis.password_secret \"Redis_Auth\"", "Secret name"],
    );
    assert_problem(
        &with_redis(&format!("{ok}\npassword_key = \"pass word\"")),
        &["redis.password_key \"pass word\""],
    );
    // Every problem at once.
    let ps = problems(&with_redis("endpoint = \"redis\"\ndatabase = -2"));
    assert!(ps.len() >= 3, "{ps:?}");
    let e = ClusterConfig::from_toml_str(&with_redis(&format!("{ok}\npasswd = \"x\"")))
        .expect_err("unknown key");
    assert!(e.to_string().contains("passwd"), "{e}");
}

#[test]
fn redis_jobs_targets_need_redis_and_a_sane_value() {
    assert_problem(
        &edit("weight = 10", "weight = 10\ntarget_redis_jobs = 4"),
        &["pools[0].target_redis_jobs applies only with a [redis] section"],
    );
    let redis = "\n[redis]\nendpoint = \"redis:6379\"\npassword_secret = \"redis-auth\"\n";
    for bad in [0, -1, 10_001] {
        let toml = format!(
            "{}{redis}",
            edit(
                "weight = 90",
                &format!("weight = 90\ntarget_redis_jobs = {bad}")
            )
        );
        assert_problem(
            &toml,
            &[&format!(
                "pools[1].target_redis_jobs ({bad}) must be within 1..=10000"
            )],
        );
    }
    let toml = format!(
        "{}{redis}",
        edit("weight = 90", "weight = 90\ntarget_redis_jobs = 8")
    );
    let cfg = ClusterConfig::from_toml_str(&toml).expect("valid");
    assert_eq!(cfg.pools()[1].redis_jobs_target(), Some(8));
}
