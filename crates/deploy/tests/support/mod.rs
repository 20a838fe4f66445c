//! Test support: the pinned CRDs, a structural-schema validator that
//! behaves like the API server's (unknown fields rejected), and CEL
//! evaluation of the CRDs' `x-kubernetes-validations`.
#![allow(dead_code)]

pub mod cel_rules;
pub mod schema;

use std::path::{Path, PathBuf};

use anyaccel_deploy::{ClusterConfig, Plan, RenderedObject, render};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repo root")
}

/// Every example config shipped in deploy/examples.
pub fn example_configs() -> Vec<PathBuf> {
    let dir = repo_root().join("deploy/examples");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("deploy/examples")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .filter(|p| !p.to_string_lossy().ends_with(".plan.toml"))
        .collect();
    v.sort();
    assert!(v.len() >= 2, "expected the example configs in {dir:?}");
    v
}

/// `NAME.plan.toml` next to `NAME.toml`: the plan that example is rendered
/// with (`deploy render --plan`).
pub fn example_plan(config: &Path) -> Option<PathBuf> {
    let plan = config.with_extension("plan.toml");
    plan.exists().then_some(plan)
}

pub fn render_example(path: &Path) -> Vec<RenderedObject> {
    let cfg = match example_plan(path) {
        None => ClusterConfig::from_path(path),
        Some(plan) => {
            Plan::from_path(&plan).and_then(|plan| ClusterConfig::from_path_with_plan(path, &plan))
        }
    }
    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    render(&cfg).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn render_str(toml: &str) -> Vec<RenderedObject> {
    let cfg = ClusterConfig::from_toml_str(toml).unwrap_or_else(|e| panic!("{e}"));
    render(&cfg).unwrap_or_else(|e| panic!("{e}"))
}

pub fn seed() -> Vec<RenderedObject> {
    render_example(&repo_root().join("deploy/examples/seed-fleet.toml"))
}

pub fn cpu() -> Vec<RenderedObject> {
    render_example(&repo_root().join("deploy/examples/cpu-prometheus.toml"))
}

pub fn of_kind<'a>(objs: &'a [RenderedObject], kind: &str) -> Vec<&'a RenderedObject> {
    objs.iter().filter(|o| o.kind() == kind).collect()
}

pub fn find<'a>(objs: &'a [RenderedObject], kind: &str, name: &str) -> &'a RenderedObject {
    objs.iter()
        .find(|o| o.kind() == kind && o.name() == name)
        .unwrap_or_else(|| panic!("no {kind} named {name}"))
}

/// A minimal valid config, for tests that vary one thing.
pub const MINIMAL: &str = r#"
[cluster]
name = "test"

[image]
repository = "registry.example.com/anyaccel"
[image.tags]
cpu-amd64 = "1.0"
nvidia = "1.0-cuda"

[ingress]
mode = "cost-weighted"

[scaling]
trigger = "prometheus"
server_address = "http://prometheus.monitoring:9090"

[[artifacts]]
name = "sd-fp32"
target = "onnx-fp32"
repo = "acme/sd-fp32"

[[artifacts]]
name = "sd-fp16"
target = "onnx-fp16"
repo = "acme/sd-fp16"

[[pools]]
name = "cpu"
accelerator = "cpu-amd64"
instance_families = ["c7i"]
min_replicas = 1
max_replicas = 4
artifact = "sd-fp32"
latency_slo_secs = 60
weight = 10

[[pools]]
name = "gpu"
accelerator = "nvidia"
instance_families = ["g5"]
min_replicas = 1
max_replicas = 4
artifact = "sd-fp16"
latency_slo_secs = 10
weight = 90
"#;
