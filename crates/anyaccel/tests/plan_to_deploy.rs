//! The seed's loop, end to end on this machine: two real `anyaccel serve`
//! processes stand in for two pools (the tiny model's fp32 artifact and the
//! int8 one `anyaccel compile` makes from it), `anyaccel bench` measures
//! each, `anyaccel plan` prices both, and `anyaccel deploy render --plan`
//! turns the plan into a fleet whose YAML carries the plan's numbers and is
//! valid against the pinned CRDs and Kubernetes' own schemas.

mod common;
#[allow(unused_imports)]
#[path = "../../deploy/tests/support/mod.rs"]
mod deploy_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{repo, serve_model, venv_python};
use serde_json::Value;

fn anyaccel(args: &[&str]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_anyaccel"))
        .args(args)
        .current_dir(repo())
        .env("RUST_LOG", "warn")
        .output()
        .expect("anyaccel runs");
    assert!(
        out.status.success(),
        "anyaccel {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("anyaccel-loop-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

fn bench(url: &str, pool: &str, instance: &str, out: &Path) -> PathBuf {
    anyaccel(&[
        "bench",
        "--url",
        url,
        "--concurrency",
        "1,2",
        "--duration",
        "2",
        "--pause",
        "0",
        "--size",
        "64x64",
        "--steps",
        "4",
        "--slo",
        "5",
        "--pool",
        pool,
        "--instance-type",
        instance,
        "--no-progress",
        "--no-plots",
        "--quiet",
        "--out",
        out.to_str().expect("utf-8 path"),
    ]);
    out.join("result.json")
}

const PRICES: &str = r#"
currency = "USD"
[instances."c7i.xlarge"]
on_demand = 0.1785
[instances."c7a.xlarge"]
on_demand = 0.2053
"#;

const CLUSTER: &str = r#"
[cluster]
name = "loop"
namespace = "anyaccel-loop"

[image]
repository = "registry.example.com/anyaccel"
[image.tags]
cpu-amd64 = "0.1.0-cpu"

[scaling]
trigger = "prometheus"
server_address = "http://prometheus.monitoring:9090"

[fleet]
hold_down_secs = 120

[[artifacts]]
name = "tiny-fp32"
target = "onnx-fp32"
repo = "acme/tiny-fp32"

[[artifacts]]
name = "tiny-int8"
target = "onnx-int8"
repo = "acme/tiny-int8"

# No weight, max_replicas, target_backlog_secs or latency_slo_secs: the plan
# provides them.
[[pools]]
name = "fp32"
accelerator = "cpu-amd64"
instance_types = ["c7i.xlarge"]
min_replicas = 1
artifact = "tiny-fp32"
sizes = ["64x64"]

[[pools]]
name = "int8"
accelerator = "cpu-amd64"
instance_types = ["c7a.xlarge"]
min_replicas = 1
artifact = "tiny-int8"
sizes = ["64x64"]
"#;

#[test]
fn bench_plan_render_validate() {
    let dir = scratch("run");
    let int8 = dir.join("tiny-int8");
    anyaccel(&[
        "compile",
        "--model",
        "fixtures/models/tiny-sd15-diffusers",
        "--target",
        "onnx-int8",
        "--out",
        int8.to_str().expect("utf-8 path"),
        "--python",
        venv_python().to_str().expect("utf-8 path"),
    ]);

    // Two pools, measured one after the other so they do not share the CPU.
    let fp32_result = {
        let s = serve_model("fixtures/models/tiny-sd15", &[], &[], Stdio::null());
        bench(&s.base, "fp32", "c7i.xlarge", &dir.join("bench-fp32"))
    };
    let int8_result = {
        let s = serve_model(int8.to_str().expect("utf-8"), &[], &[], Stdio::null());
        bench(&s.base, "int8", "c7a.xlarge", &dir.join("bench-int8"))
    };

    let prices = dir.join("prices.toml");
    std::fs::write(&prices, PRICES).expect("prices");
    let plan_dir = dir.join("plan");
    anyaccel(&[
        "plan",
        "--results",
        fp32_result.to_str().expect("utf-8"),
        int8_result.to_str().expect("utf-8"),
        "--prices",
        prices.to_str().expect("utf-8"),
        "--slo",
        "5",
        "--demand",
        "2",
        "--quiet",
        "--out",
        plan_dir.to_str().expect("utf-8"),
    ]);
    let plan_path = plan_dir.join("plan.toml");
    let plan = anyaccel_deploy::Plan::from_path(&plan_path).expect("deploy reads the plan");
    assert_eq!(plan.file().pools.len(), 2, "both pools meet a 5 s SLO");

    let cluster = dir.join("cluster.toml");
    std::fs::write(&cluster, CLUSTER).expect("cluster.toml");
    let rendered = dir.join("rendered");
    anyaccel(&[
        "deploy",
        "render",
        "--config",
        cluster.to_str().expect("utf-8"),
        "--plan",
        plan_path.to_str().expect("utf-8"),
        "--out",
        rendered.to_str().expect("utf-8"),
    ]);

    // The rendered files carry the plan's numbers.
    let objects: Vec<Value> = std::fs::read_dir(&rendered)
        .expect("rendered dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.file_name().is_some_and(|n| n != "kustomization.yaml"))
        .map(|p| {
            serde_norway::from_str(&std::fs::read_to_string(&p).expect("read"))
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        })
        .collect();
    let find = |kind: &str, name: &str| -> &Value {
        objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name}"))
    };
    let ingress = find("Ingress", "anyaccel");
    let action: Value = serde_json::from_str(
        ingress["metadata"]["annotations"]["alb.ingress.kubernetes.io/actions.weighted-pools"]
            .as_str()
            .expect("weighted action"),
    )
    .expect("JSON");
    let groups = action["forwardConfig"]["targetGroups"]
        .as_array()
        .expect("groups");
    for p in &plan.file().pools {
        let g = groups
            .iter()
            .find(|g| g["serviceName"] == format!("anyaccel-{}", p.name))
            .expect("a target group per planned pool");
        assert_eq!(g["weight"], p.weight, "{}", p.name);
        let so = find("ScaledObject", &format!("anyaccel-{}", p.name));
        assert_eq!(so["spec"]["maxReplicaCount"], p.max_replicas, "{}", p.name);
        let np = find("NodePool", &format!("anyaccel-loop-{}", p.name));
        assert_eq!(np["spec"]["weight"], p.node_pool_weight, "{}", p.name);
        // KEDA scales each pool on the backlog target the plan derived from
        // its measured latency.
        let trigger = &so["spec"]["triggers"][0];
        let threshold: f64 = trigger["metadata"]["threshold"]
            .as_str()
            .expect("threshold is a string")
            .parse()
            .expect("threshold is a number");
        assert!(
            p.target_backlog_secs > 0.0 && (threshold - p.target_backlog_secs).abs() < 1e-9,
            "{}: KEDA threshold {threshold}, plan target_backlog_secs {}",
            p.name,
            p.target_backlog_secs
        );
    }
    for o in &objects {
        let a = &o["metadata"]["annotations"];
        let id = format!("{}/{}", o["kind"], o["metadata"]["name"]);
        assert_eq!(
            a["anyaccel.io/plan-sha256"],
            plan.stamp().sha256.as_str(),
            "{id}"
        );
        assert_eq!(
            a["anyaccel.io/plan-generated-at"],
            plan.file().plan.generated_at.as_str(),
            "{id}"
        );
    }

    // The fleet controller gets the plan's fallback order and weights.
    let cm = find("ConfigMap", "anyaccel-fleet");
    let spec = anyaccel_deploy::fleet::FleetSpec::from_json(
        cm["data"][anyaccel_deploy::fleet::FLEET_SPEC_KEY]
            .as_str()
            .expect("fleet.json"),
    )
    .expect("the controller's spec parses");
    let order: Vec<&str> = spec.pools.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(order, plan.file().plan.fallback_order);
    for p in &spec.pools {
        let planned = plan.pool(&p.name).expect("a planned pool");
        assert_eq!(u32::from(p.weight), planned.weight, "{}", p.name);
    }
    assert_eq!(spec.plan.as_ref(), Some(plan.stamp()));
    assert_eq!(spec.hold_down_secs, 120);

    // The same plan in another format version: the real binary refuses it,
    // naming the file and both versions, and writes nothing.
    let old_plan = dir.join("plan-v1.toml");
    let text = std::fs::read_to_string(&plan_path).expect("plan.toml");
    let current = format!(
        "format_version = {}",
        anyaccel_deploy::plan::PLAN_FILE_VERSION
    );
    assert!(text.contains(&current), "{text}");
    std::fs::write(&old_plan, text.replace(&current, "format_version = 1")).expect("old plan");
    let refused_out = dir.join("rendered-v1");
    let refused = Command::new(env!("CARGO_BIN_EXE_anyaccel"))
        .args([
            "deploy",
            "render",
            "--config",
            cluster.to_str().expect("utf-8"),
            "--plan",
            old_plan.to_str().expect("utf-8"),
            "--out",
            refused_out.to_str().expect("utf-8"),
        ])
        .current_dir(repo())
        .env("RUST_LOG", "warn")
        .output()
        .expect("anyaccel runs");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains(old_plan.to_str().expect("utf-8"))
            && stderr.contains(&format!(
                "plan format_version 1, but this build reads {}",
                anyaccel_deploy::plan::PLAN_FILE_VERSION
            )),
        "{stderr}"
    );
    assert!(
        !refused_out.exists(),
        "nothing rendered from a refused plan"
    );

    // Valid as a cluster would see it: custom resources against the pinned
    // CRDs (structural schema and CEL), built-in kinds with
    // kubernetes-validate in strict mode.
    let mut custom = 0;
    for o in &objects {
        let group = o["apiVersion"].as_str().unwrap_or_default();
        if group.starts_with("keda.sh/") || group.starts_with("karpenter.") {
            let r = deploy_support::schema::validate_object(o);
            assert!(r.errors.is_empty(), "{}: {:?}", o["kind"], r.errors);
            custom += 1;
        }
    }
    assert!(
        custom >= 6,
        "ScaledObjects, NodePools and EC2NodeClasses: {custom}"
    );
    let status = Command::new(repo().join("scripts/deploy/validate.sh"))
        .arg(&rendered)
        .current_dir(repo())
        .status()
        .expect("validate.sh runs");
    assert!(
        status.success(),
        "kubernetes-validate rejected the rendered fleet"
    );
    std::fs::remove_dir_all(&dir).ok();
}
