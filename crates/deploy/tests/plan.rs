//! `deploy render --plan`: the plan's numbers land in the objects, every
//! object says which plan it came from, and a plan that does not fit the
//! config is refused with both sides named.

mod support;

use anyaccel_deploy::fleet::{FLEET_SPEC_KEY, FleetSpec, action_annotation};
use anyaccel_deploy::plan::PlanFile;
use anyaccel_deploy::{
    ClusterConfig, DeployError, PLAN_DATE_ANNOTATION, PLAN_SHA256_ANNOTATION, Plan, render,
};
use serde_json::Value;
use support::{MINIMAL, find, of_kind, repo_root};

fn seed_plan_path() -> std::path::PathBuf {
    repo_root().join("bench/examples/seed-plan/plan.toml")
}

fn seed_plan() -> Plan {
    Plan::from_path(&seed_plan_path()).expect("the seed plan reads")
}

/// A plan for MINIMAL's two pools, as `anyaccel plan` writes it.
const TWO_POOLS: &str = r#"
format_version = 2

[plan]
generated_at = "2026-12-01T10:00:00Z"
tool_version = "0.1.0"
latency_slo_secs = 10.0
headroom = 0.2
capacity_type = "on-demand"
weights = "mix"
demand_peak_images_per_s = 2.0
currency = "USD"
cost_per_hour_at_peak = 3.0
fallback_order = ["gpu", "cpu"]

[[pools]]
name = "gpu"
weight = 700
node_pool_weight = 100
target_backlog_secs = 4.0
max_replicas = 12
instance_type = "g5.xlarge"
accelerator = "nvidia"
target_images_per_second = 0.5
planned_replicas = 4
fallback_rank = 1
cost_per_1000_images = 0.5

[[pools]]
name = "cpu"
weight = 300
node_pool_weight = 90
target_backlog_secs = 6.0
max_replicas = 20
instance_type = "c7i.2xlarge"
accelerator = "cpu-amd64"
target_images_per_second = 0.05
planned_replicas = 8
fallback_rank = 2
cost_per_1000_images = 4.0
"#;

/// MINIMAL without the keys a plan provides.
fn minimal_for_plan() -> String {
    MINIMAL
        .lines()
        .filter(|l| {
            !["max_replicas", "weight", "latency_slo_secs"]
                .iter()
                .any(|k| l.starts_with(k))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn plan_str(text: &str) -> Result<Plan, DeployError> {
    Plan::from_toml_str(text, "plan.toml")
}

fn with_plan(config: &str, plan: &str) -> Result<ClusterConfig, DeployError> {
    ClusterConfig::from_toml_str_with_plan(config, &plan_str(plan)?)
}

fn err_text(e: DeployError) -> String {
    e.to_string()
}

#[test]
fn the_seed_plan_sets_weights_targets_and_bounds_of_every_pool() {
    let plan = seed_plan();
    let cfg = ClusterConfig::from_path_with_plan(
        &repo_root().join("deploy/examples/seed-planned.toml"),
        &plan,
    )
    .expect("seed-planned + seed plan");
    let objs = render(&cfg).expect("render");

    let ingress = find(&objs, "Ingress", "anyaccel");
    let action: Value = serde_json::from_str(
        ingress.value()["metadata"]["annotations"][action_annotation("weighted-pools")]
            .as_str()
            .expect("weighted action"),
    )
    .expect("action JSON");
    for p in &plan.file().pools {
        let group = action["forwardConfig"]["targetGroups"]
            .as_array()
            .expect("target groups")
            .iter()
            .find(|g| g["serviceName"] == format!("anyaccel-{}", p.name))
            .unwrap_or_else(|| panic!("{}: no target group", p.name));
        assert_eq!(group["weight"], p.weight, "{}: ingress weight", p.name);

        let np = find(&objs, "NodePool", &format!("anyaccel-{}", p.name));
        assert_eq!(
            np.value()["spec"]["weight"],
            p.node_pool_weight,
            "{}: NodePool weight",
            p.name
        );
        let so = find(&objs, "ScaledObject", &format!("anyaccel-{}", p.name));
        assert_eq!(so.value()["spec"]["maxReplicaCount"], p.max_replicas);
        let threshold: f64 = so.value()["spec"]["triggers"][0]["metadata"]["threshold"]
            .as_str()
            .expect("threshold")
            .parse()
            .expect("number");
        assert!(
            (threshold - p.target_backlog_secs).abs() < 1e-9,
            "{}: KEDA threshold {threshold} vs plan {}",
            p.name,
            p.target_backlog_secs
        );
    }

    // Every object says which plan it came from.
    for o in &objs {
        let a = &o.value()["metadata"]["annotations"];
        assert_eq!(a[PLAN_SHA256_ANNOTATION], plan.stamp().sha256, "{}", o.id());
        assert_eq!(a[PLAN_DATE_ANNOTATION], plan.file().plan.generated_at);
    }
    assert_eq!(plan.stamp().sha256.len(), 64);

    // The controller gets the plan's weights in the plan's fallback order.
    let cm = find(&objs, "ConfigMap", "anyaccel-fleet");
    let spec = FleetSpec::from_json(cm.value()["data"][FLEET_SPEC_KEY].as_str().expect("spec"))
        .expect("spec parses");
    let order: Vec<&str> = spec.pools.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(order, plan.file().plan.fallback_order);
    for p in &spec.pools {
        assert_eq!(
            u32::from(p.weight),
            plan.pool(&p.name).expect("planned").weight
        );
    }
    assert_eq!(spec.plan.as_ref(), Some(plan.stamp()));
}

#[test]
fn the_plan_hash_changes_with_the_file() {
    let a = plan_str(TWO_POOLS).expect("plan");
    let b =
        plan_str(&TWO_POOLS.replace("2026-12-01T10:00:00Z", "2026-12-02T10:00:00Z")).expect("plan");
    assert_ne!(a.stamp().sha256, b.stamp().sha256);
    assert_eq!(b.stamp().generated_at, "2026-12-02T10:00:00Z");
}

#[test]
fn a_plan_fills_only_what_the_config_leaves_out_and_agrees_with() {
    let cfg = with_plan(&minimal_for_plan(), TWO_POOLS).expect("fits");
    let gpu = cfg.pools().iter().find(|p| p.name() == "gpu").expect("gpu");
    assert_eq!(gpu.weight(), 700);
    assert_eq!(gpu.max_replicas(), 12);
    assert_eq!(gpu.node_pool_weight(), Some(100));
    assert!((gpu.scale_target() - 4.0).abs() < 1e-12);
    assert!((gpu.latency_slo_secs() - 10.0).abs() < 1e-12);
    let order: Vec<&str> = cfg.pools_in_fallback_order().map(|p| p.name()).collect();
    assert_eq!(order, ["gpu", "cpu"]);

    // The same value on both sides is not a contradiction.
    let agreeing = minimal_for_plan().replace(
        "name = \"gpu\"",
        "name = \"gpu\"\nweight = 700\nmax_replicas = 12",
    );
    with_plan(&agreeing, TWO_POOLS).expect("agreeing keys are fine");
}

#[test]
fn a_config_value_that_contradicts_the_plan_names_both_files() {
    let config = minimal_for_plan().replace(
        "name = \"gpu\"",
        "name = \"gpu\"\nweight = 500\ntarget_backlog_secs = 3\nlatency_slo_secs = 8",
    );
    let e = with_plan(&config, TWO_POOLS).expect_err("contradiction");
    let problems = e.problems().to_vec();
    let text = err_text(e);
    assert!(
        text.contains("cluster config and plan.toml disagree"),
        "{text}"
    );
    for (key, ours, theirs) in [
        ("weight", "500", "700"),
        ("target_backlog_secs", "3", "4"),
        ("latency_slo_secs", "8", "10"),
    ] {
        assert!(
            problems
                .iter()
                .any(|p| p.contains(&format!(
                    "pools[1] (\"gpu\").{key} = {ours} in cluster config"
                )) && p.contains(&format!("plan.toml gives \"gpu\" {key} = {theirs}"))),
            "{key}: {problems:#?}"
        );
    }
}

#[test]
fn a_plan_for_other_pools_is_refused_naming_both_sides() {
    let plan = TWO_POOLS.replace("\"gpu\"", "\"inf2\"");
    let e = with_plan(&minimal_for_plan(), &plan).expect_err("other pools");
    let p = e.problems().to_vec();
    assert!(
        p.iter().any(
            |m| m.contains("pools[1] (\"gpu\") in cluster config is not in plan.toml")
                && m.contains("[\"inf2\", \"cpu\"]")
        ),
        "{p:#?}"
    );
    assert!(
        p.iter()
            .any(|m| m
                .contains("plan.toml plans pool \"inf2\", which cluster config does not define")),
        "{p:#?}"
    );
}

#[test]
fn a_plan_of_another_format_version_says_which() {
    let old = TWO_POOLS.replace("format_version = 2", "format_version = 1");
    let e = plan_str(&old).expect_err("old format");
    assert!(matches!(e, DeployError::PlanVersion { .. }), "{e}");
    let text = err_text(e);
    assert!(
        text.contains("format_version 1") && text.contains("reads 2"),
        "{text}"
    );

    let none = TWO_POOLS.replace("format_version = 2\n", "");
    assert!(err_text(plan_str(&none).expect_err("no version")).contains("format_version none"));
}

#[test]
fn weights_must_be_what_the_alb_takes_and_sum_as_plans_do() {
    for (edit, want) in [
        (("weight = 700", "weight = 690"), "the weights sum to 990"),
        (
            ("weight = 700", "weight = 0"),
            "weight (0) must be within 1..=999",
        ),
        (
            ("weight = 300", "weight = 1300"),
            "weight (1300) must be within 1..=999",
        ),
        (
            ("node_pool_weight = 90", "node_pool_weight = 0"),
            "node_pool_weight (0)",
        ),
        (
            ("max_replicas = 12", "max_replicas = 0"),
            "max_replicas (0)",
        ),
        (
            ("target_backlog_secs = 6.0", "target_backlog_secs = 11.0"),
            "must be below plan.latency_slo_secs",
        ),
        (
            (
                "fallback_order = [\"gpu\", \"cpu\"]",
                "fallback_order = [\"gpu\"]",
            ),
            "plan.fallback_order",
        ),
        (
            (
                "capacity_type = \"on-demand\"",
                "capacity_type = \"reserved\"",
            ),
            "plan.capacity_type",
        ),
    ] {
        let text = TWO_POOLS.replace(edit.0, edit.1);
        assert_ne!(text, TWO_POOLS, "edit {edit:?} applies");
        let e = plan_str(&text).expect_err("bad plan");
        assert!(matches!(e, DeployError::InvalidPlan { .. }), "{e}");
        assert!(
            e.problems().iter().any(|p| p.contains(want)),
            "{edit:?}: want {want:?} in {:#?}",
            e.problems()
        );
    }
    // An unknown key is a parse error with its line.
    let e = plan_str(&TWO_POOLS.replace("headroom = 0.2", "headroom = 0.2\nnodepool_weight = 3"))
        .expect_err("unknown key");
    assert!(err_text(e).contains("nodepool_weight"));
}

/// TWO_POOLS with only its gpu pool, weighted as the planner weights a lone
/// pool.
fn one_pool(weight: u32) -> String {
    let (head, _cpu) = TWO_POOLS.rsplit_once("[[pools]]").expect("two pools");
    head.replace(
        "fallback_order = [\"gpu\", \"cpu\"]",
        "fallback_order = [\"gpu\"]",
    )
    .replace("weight = 700", &format!("weight = {weight}"))
}

#[test]
fn a_lone_pool_weighs_999_because_one_target_group_takes_no_more() {
    let plan = plan_str(&one_pool(999)).expect("a one-pool plan at 999 is what plan writes");
    assert_eq!(plan.file().pools.len(), 1);
    assert_eq!(anyaccel_deploy::plan::plan_weight_total(1), 999);
    assert_eq!(anyaccel_deploy::plan::plan_weight_total(2), 1000);
    for bad in [998, 1000] {
        let e = plan_str(&one_pool(bad)).expect_err("not the planner's total");
        assert!(
            e.problems().iter().any(|p| p.contains("sum to 999")
                || p.contains(&format!("weight ({bad}) must be within 1..=999"))),
            "{bad}: {:#?}",
            e.problems()
        );
    }
    // Two pools still sum to 1000: 999 is not enough there.
    let e = plan_str(&TWO_POOLS.replace("weight = 700", "weight = 699")).expect_err("999");
    assert!(
        e.problems()
            .iter()
            .any(|p| p.contains("the weights sum to 999") && p.contains("sum to 1000")),
        "{:#?}",
        e.problems()
    );
}

#[test]
fn the_plan_sets_the_ceiling_and_min_replicas_stays_the_configs() {
    // MINIMAL's gpu pool (the second) with a floor of 3; the plan's ceiling is 12.
    let floor = |min: u32| {
        let config = minimal_for_plan();
        let (cpu, gpu) = config.split_once("name = \"gpu\"").expect("gpu pool");
        format!(
            "{cpu}name = \"gpu\"{}",
            gpu.replacen("min_replicas = 1", &format!("min_replicas = {min}"), 1)
        )
    };
    let cfg = with_plan(&floor(3), TWO_POOLS).expect("a floor below the plan's ceiling");
    let gpu = cfg.pools().iter().find(|p| p.name() == "gpu").expect("gpu");
    assert_eq!((gpu.min_replicas(), gpu.max_replicas()), (3, 12));
    let e = with_plan(&floor(13), TWO_POOLS).expect_err("floor above the ceiling");
    assert!(
        e.problems()
            .iter()
            .any(|p| p.contains("max_replicas (12) is below min_replicas (13)")),
        "{:#?}",
        e.problems()
    );
}

#[test]
fn settings_the_plan_cannot_honour_are_contradictions() {
    for (edit, want) in [
        (
            ("mode = \"cost-weighted\"", "mode = \"even\""),
            "ingress.mode = \"even\" in cluster config contradicts plan.toml",
        ),
        (
            ("name = \"gpu\"", "name = \"gpu\"\ncapacity_type = \"spot\""),
            "the plan was priced for on-demand capacity",
        ),
        (
            (
                "instance_families = [\"g5\"]",
                "instance_families = [\"g6\"]",
            ),
            "but the plan measured g5.xlarge",
        ),
        (
            (
                "server_address = \"http://prometheus.monitoring:9090\"",
                "server_address = \"http://prometheus.monitoring:9090\"\nsignal = \"queue-depth\"",
            ),
            "scales on queue depth",
        ),
    ] {
        let config = minimal_for_plan().replace(edit.0, edit.1);
        assert_ne!(config, minimal_for_plan(), "edit {edit:?} applies");
        let e = with_plan(&config, TWO_POOLS).expect_err("contradiction");
        assert!(
            e.problems().iter().any(|p| p.contains(want)),
            "{edit:?}: want {want:?} in {:#?}",
            e.problems()
        );
    }
}

#[test]
fn without_a_plan_nothing_is_stamped_and_the_config_order_is_the_fallback() {
    let cfg = ClusterConfig::from_toml_str(MINIMAL).expect("minimal");
    let objs = render(&cfg).expect("render");
    assert!(
        objs.iter()
            .all(|o| o.value()["metadata"]["annotations"][PLAN_SHA256_ANNOTATION].is_null())
    );
    let cm = find(&objs, "ConfigMap", "anyaccel-fleet");
    let spec = FleetSpec::from_json(cm.value()["data"][FLEET_SPEC_KEY].as_str().expect("spec"))
        .expect("spec");
    assert_eq!(spec.plan, None);
    let order: Vec<(&str, u16)> = spec
        .pools
        .iter()
        .map(|p| (p.name.as_str(), p.weight))
        .collect();
    assert_eq!(order, [("cpu", 10), ("gpu", 90)]);
}

#[test]
fn the_controller_gets_the_least_rbac_it_needs() {
    let objs = support::seed();
    let rules = |kind: &str, name: &str| -> Vec<(String, String, Vec<String>)> {
        find(&objs, kind, name).value()["rules"]
            .as_array()
            .expect("rules")
            .iter()
            .map(|r| {
                let s = |v: &Value| v.as_str().expect("string").to_string();
                (
                    s(&r["apiGroups"][0]),
                    s(&r["resources"][0]),
                    r["verbs"]
                        .as_array()
                        .expect("verbs")
                        .iter()
                        .map(s)
                        .collect(),
                )
            })
            .collect()
    };
    let v = |vs: &[&str]| vs.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let ns_roles: Vec<_> = of_kind(&objs, "Role")
        .into_iter()
        .filter(|r| r.namespace() == Some("anyaccel") && r.name() == "anyaccel-fleet")
        .collect();
    assert_eq!(ns_roles.len(), 1);
    assert_eq!(
        rules("Role", "anyaccel-fleet"),
        [
            ("apps".into(), "deployments".into(), v(&["list", "watch"])),
            (
                "keda.sh".into(),
                "scaledobjects".into(),
                v(&["list", "watch"])
            ),
            (
                "networking.k8s.io".into(),
                "ingresses".into(),
                v(&["get", "patch"])
            ),
            ("".into(), "events".into(), v(&["list", "watch", "create"])),
        ]
    );
    // The one object it writes is named.
    let role = find(&objs, "Role", "anyaccel-fleet");
    assert_eq!(
        role.value()["rules"][2]["resourceNames"],
        serde_json::json!(["anyaccel"])
    );
    assert_eq!(
        rules("ClusterRole", "anyaccel-fleet-anyaccel"),
        [(
            "karpenter.sh".into(),
            "nodeclaims".into(),
            v(&["list", "watch"])
        )]
    );
    let events = find(&objs, "Role", "anyaccel-fleet-anyaccel");
    assert_eq!(events.namespace(), Some("default"));
    assert_eq!(
        rules("Role", "anyaccel-fleet-anyaccel"),
        [("".into(), "events".into(), v(&["list", "watch"]))]
    );
    // No wildcard anywhere, and no Secrets.
    for o in objs
        .iter()
        .filter(|o| o.name().starts_with("anyaccel-fleet"))
    {
        let text = o.value().to_string();
        assert!(!text.contains("\"*\""), "{}: wildcard", o.id());
        assert!(!text.contains("secrets"), "{}: secrets", o.id());
    }

    let d = find(&objs, "Deployment", "anyaccel-fleet");
    let pod = &d.value()["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "anyaccel-fleet");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["containers"][0]["args"][0], "fleet");
    assert_eq!(
        d.value()["spec"]["replicas"],
        1,
        "one writer of the annotation"
    );
}

#[test]
fn one_pool_or_controller_off_renders_no_controller() {
    let (head, _gpu_pool) = MINIMAL
        .split_once("[[pools]]\nname = \"gpu\"")
        .expect("gpu pool");
    let one = head.replace(
        "[[artifacts]]\nname = \"sd-fp16\"\ntarget = \"onnx-fp16\"\nrepo = \"acme/sd-fp16\"\n",
        "",
    );
    assert_ne!(one, head, "the fp16 artifact is removed");
    let objs = support::render_str(&one);
    assert!(objs.iter().all(|o| !o.name().starts_with("anyaccel-fleet")));
    let off = format!("{MINIMAL}\n[fleet]\ncontroller = false\n");
    let objs = support::render_str(&off);
    assert!(objs.iter().all(|o| !o.name().starts_with("anyaccel-fleet")));

    let no_cpu_tag = MINIMAL.replace("cpu-amd64 = \"1.0\"\n", "");
    let e = ClusterConfig::from_toml_str(&no_cpu_tag).expect_err("controller needs an image");
    assert!(
        e.problems()
            .iter()
            .any(|p| p.contains("image.tags.cpu-amd64 is required for the fleet controller")),
        "{e}"
    );
}

#[test]
fn the_plan_file_round_trips_through_its_type() {
    let text = std::fs::read_to_string(seed_plan_path()).expect("seed plan");
    let f: PlanFile = toml::from_str(&text).expect("PlanFile");
    assert_eq!(&f, seed_plan().file());
}
