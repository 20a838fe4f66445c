//! `anyaccel plan` on worked examples: the seed's published table, capacity
//! limits, demand profiles, and the inputs it must refuse.

mod common;

use anyaccel_bench::plan::{Plan, PlanArgs, compute, load_inputs};
use anyaccel_bench::{BenchError, plan, run_plan};
use clap::Parser;
use common::{fixtures, scratch};
use std::path::Path;

fn plan_args(extra: &[&str], out: &Path) -> PlanArgs {
    let table = fixtures().join("seed-published-table.toml");
    let prices = fixtures().join("prices-seed.toml");
    let mut v: Vec<String> = vec![
        "plan".into(),
        "--table".into(),
        table.display().to_string(),
        "--prices".into(),
        prices.display().to_string(),
        "--out".into(),
        out.display().to_string(),
        "--quiet".into(),
    ];
    v.extend(extra.iter().map(|s| s.to_string()));
    PlanArgs::try_parse_from(v).unwrap()
}

fn seed_plan(extra: &[&str]) -> Plan {
    let out = scratch("seed");
    compute(&load_inputs(&plan_args(extra, &out)).unwrap()).unwrap()
}

fn names(p: &Plan) -> Vec<&str> {
    p.pools.iter().map(|x| x.name.as_str()).collect()
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol
}

#[test]
fn seed_table_cost_ordering_and_cost_per_1000_images() {
    let p = seed_plan(&["--slo", "1.0", "--demand", "10"]);
    assert!(p.is_feasible());
    assert_eq!(names(&p), ["inf2", "trn1", "g5-compiled", "g6", "g5-eager"]);
    // $/h / (images/min x 60) x 1000.
    let expected = [
        ("inf2", 0.7582 / (105.0 * 60.0) * 1000.0),
        ("trn1", 1.3438 / (130.0 * 60.0) * 1000.0),
        ("g5-compiled", 1.006 / (90.0 * 60.0) * 1000.0),
        ("g6", 0.8048 / (61.0 * 60.0) * 1000.0),
        ("g5-eager", 1.006 / (60.0 * 60.0) * 1000.0),
    ];
    for (pool, (name, cost)) in p.pools.iter().zip(expected) {
        assert_eq!(pool.name, name);
        assert!(
            close(pool.cost_per_1000_images, cost, 1e-9),
            "{name}: {} vs {cost}",
            pool.cost_per_1000_images
        );
    }
    assert!(close(p.pools[0].cost_per_1000_images, 0.1203, 5e-5));
    assert!(close(p.pools[4].cost_per_1000_images, 0.2794, 5e-5));
    // The seed's Table 1 "cost of inference" is price / throughput; for the
    // three rows it computed exactly, ours agrees.
    for (i, seed) in [(2, 0.01118), (3, 0.01320), (4, 0.01677)] {
        let per_unit = p.pools[i].price_per_hour / (p.pools[i].capacity_images_per_s * 60.0);
        assert!(
            close(per_unit, seed, 5e-5),
            "{}: {per_unit}",
            p.pools[i].name
        );
    }
}

#[test]
fn seed_table_weights_and_keda_targets() {
    let p = seed_plan(&[
        "--slo",
        "1.0",
        "--demand",
        "10",
        "--weights",
        "inverse-cost",
    ]);
    let nodepool: Vec<u32> = p.pools.iter().map(|x| x.node_pool_weight).collect();
    assert_eq!(nodepool, [100, 90, 80, 70, 60]);
    // Traffic in proportion to 1 / cost per image, summing to 1000. (The
    // seed tuned 40/20/15/10/15 by hand, which sends g5-eager, its most
    // expensive unit, more than g6.)
    let ingress: Vec<u32> = p.pools.iter().map(|x| x.weight).collect();
    assert_eq!(ingress, [301, 210, 194, 165, 130]);
    assert_eq!(ingress.iter().sum::<u32>(), 1000);
    // KEDA: 80% of capacity; backlog 0.8 x the latency at capacity.
    let inf2 = &p.pools[0];
    assert!(close(inf2.target_images_per_s, 105.0 / 60.0 * 0.8, 1e-12));
    assert!(close(inf2.target_backlog_secs, 0.536, 1e-12));
    assert!(close(p.pools[1].target_backlog_secs, 0.408, 1e-12));
    let fallback: Vec<usize> = p.pools.iter().map(|x| x.fallback_rank).collect();
    assert_eq!(fallback, [1, 2, 3, 4, 5]);
    // Capacity mode: the seed's adjusted throughput, min(mean, own).
    let mean = (105.0 + 130.0 + 90.0 + 61.0 + 60.0) / 5.0 / 60.0;
    assert!(close(
        p.pools[0].capacity_mode_target_images_per_s,
        mean,
        1e-12
    ));
    assert!(close(
        p.pools[1].capacity_mode_target_images_per_s,
        mean,
        1e-12
    ));
    assert!(close(
        p.pools[3].capacity_mode_target_images_per_s,
        61.0 / 60.0,
        1e-12
    ));
    // 89.2 per minute, as the seed's Table 2 says.
    assert!(close(mean * 60.0, 89.2, 1e-9));
}

#[test]
fn seed_table_cheapest_mix_and_mix_weights() {
    let p = seed_plan(&["--slo", "1.0", "--demand", "10"]);
    let mix = p.mix.as_ref().unwrap();
    // 8 inf2 (6.07 $/h) would do; 6 inf2 + 1 trn1 is cheaper (5.89 $/h).
    assert_eq!(mix.replicas.get("inf2"), Some(&6));
    assert_eq!(mix.replicas.get("trn1"), Some(&1));
    assert_eq!(mix.replicas.len(), 2);
    assert!(close(mix.cost_per_hour, 6.0 * 0.7582 + 1.3438, 1e-9));
    assert!(mix.capacity_images_per_s >= 10.0);
    assert!(mix.proven_optimal);
    // Traffic follows the mix's capacity; pools outside it keep weight 1.
    let ingress: Vec<u32> = p.pools.iter().map(|x| x.weight).collect();
    assert_eq!(ingress, [826, 171, 1, 1, 1]);
    // max_replicas lets each pool carry the peak alone.
    let max: Vec<u32> = p.pools.iter().map(|x| x.max_replicas).collect();
    assert_eq!(max, [8, 6, 9, 13, 13]);
}

#[test]
fn the_seeds_own_slo_excludes_the_slow_units() {
    // The seed's breaking point was 900 ms: g6 (0.96 s) and g5 without
    // torch.compile (0.92 s) do not make it.
    let p = seed_plan(&["--slo", "0.9", "--demand", "10"]);
    assert_eq!(names(&p), ["inf2", "trn1", "g5-compiled"]);
    let excluded: Vec<&str> = p.excluded.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(excluded, ["g6", "g5-eager"]);
    assert!(
        p.excluded[0].reason.contains("0.96"),
        "{}",
        p.excluded[0].reason
    );
    let nodepool: Vec<u32> = p.pools.iter().map(|x| x.node_pool_weight).collect();
    assert_eq!(nodepool, [100, 90, 80]);
    assert!(p.markdown().contains("Pools that do not meet the SLO"));
}

#[test]
fn an_slo_no_pool_meets_is_an_explicit_no_feasible_plan() {
    let out = scratch("infeasible");
    // A stale fragment from an earlier run must disappear.
    std::fs::write(out.join("plan.toml"), "stale").unwrap();
    let a = plan_args(&["--slo", "0.5", "--demand", "10"], &out);
    let o = plan(&a).unwrap();
    assert!(!o.plan.is_feasible());
    assert!(o.config_path.is_none());
    assert!(!out.join("plan.toml").exists());
    assert!(o.report.contains("## No feasible plan"), "{}", o.report);
    assert!(o.report.contains("trn1"), "the report says why per pool");
    assert_eq!(o.plan.excluded.len(), 5);
    let e = run_plan(&a).unwrap_err();
    assert!(matches!(e, BenchError::NoFeasiblePlan(_)), "{e}");
    assert!(e.to_string().contains("0.5"), "{e}");
}

#[test]
fn a_pool_without_a_price_is_a_clear_error() {
    let out = scratch("noprice");
    let prices = out.join("prices.toml");
    std::fs::write(
        &prices,
        "[instances.\"inf2.xlarge\"]\non_demand = 0.7582\n[instances.\"trn1.2xlarge\"]\non_demand = 1.3438\n[instances.\"g5.xlarge\"]\non_demand = 1.006\n",
    )
    .unwrap();
    let mut a = plan_args(&["--slo", "1", "--demand", "1"], &out);
    a.prices = prices.clone();
    let e = compute(&load_inputs(&a).unwrap()).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, BenchError::NoPrice { .. }), "{msg}");
    assert!(msg.contains("g6.xlarge") && msg.contains("\"g6\""), "{msg}");
    assert!(msg.contains(&prices.display().to_string()), "{msg}");

    // Spot capacity needs spot prices.
    let a = plan_args(
        &["--slo", "1", "--demand", "1", "--capacity-type", "spot"],
        &out,
    );
    let msg = compute(&load_inputs(&a).unwrap()).unwrap_err().to_string();
    assert!(msg.contains("spot"), "{msg}");
}

#[test]
fn other_format_versions_are_refused() {
    let out = scratch("version");
    // A bench result from another version.
    let res = out.join("result.json");
    std::fs::write(&res, r#"{"format_version": 99, "levels": []}"#).unwrap();
    let mut a = plan_args(&["--slo", "1", "--demand", "1"], &out);
    a.tables.clear();
    a.results = vec![res.clone()];
    let e = load_inputs(&a).unwrap_err();
    assert!(matches!(e, BenchError::FormatVersion { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("99") && msg.contains("result.json"), "{msg}");
    // And a table from another version.
    let table = out.join("table.toml");
    let text = std::fs::read_to_string(fixtures().join("seed-published-table.toml"))
        .unwrap()
        .replace("format_version = 1", "format_version = 2");
    std::fs::write(&table, text).unwrap();
    let mut a = plan_args(&["--slo", "1", "--demand", "1"], &out);
    a.tables = vec![table];
    assert!(matches!(
        load_inputs(&a).unwrap_err(),
        BenchError::FormatVersion { .. }
    ));
}

#[test]
fn capacity_limits_spread_the_mix_in_cost_order() {
    // Only 3 inf2 and 2 trn1 can be had: the rest comes from the next
    // cheapest pools, in order.
    let p = seed_plan(&[
        "--slo",
        "1.0",
        "--demand",
        "10",
        "--max-replicas",
        "inf2=3",
        "--max-replicas",
        "trn1=2",
    ]);
    let mix = p.mix.as_ref().unwrap();
    assert_eq!(mix.replicas.get("inf2"), Some(&3));
    assert_eq!(mix.replicas.get("trn1"), Some(&2));
    // 10 - 3 x 1.4 - 2 x 1.7333 = 2.333 images/s left: 2 g5-compiled (2.4).
    assert_eq!(mix.replicas.get("g5-compiled"), Some(&2));
    assert!(mix.capacity_images_per_s >= 10.0);
    let inf2 = &p.pools[0];
    assert_eq!(
        inf2.max_replicas, 3,
        "max_replicas never exceeds what is available"
    );
    let w: Vec<u32> = p.pools.iter().map(|x| x.weight).collect();
    assert_eq!(w.iter().sum::<u32>(), 1000);
    assert!(w[0] > w[2] && w[2] > w[3], "{w:?}");

    // More demand than everything available: no feasible plan, and why.
    let p = seed_plan(&[
        "--slo",
        "1.0",
        "--demand",
        "10",
        "--max-replicas",
        "inf2=1",
        "--max-replicas",
        "trn1=1",
        "--max-replicas",
        "g5-compiled=1",
        "--max-replicas",
        "g6=1",
        "--max-replicas",
        "g5-eager=1",
    ]);
    assert!(!p.is_feasible());
    assert!(p.infeasible.as_ref().unwrap().contains("demand"));
    assert!(p.fragment().is_none());
}

#[test]
fn a_demand_profile_is_sized_for_its_peak_and_costed_over_the_day() {
    let profile = fixtures().join("examples/demand-day.toml");
    let p = seed_plan(&[
        "--slo",
        "1.0",
        "--demand-profile",
        profile.to_str().unwrap(),
    ]);
    assert!(close(p.demand.peak, 10.0, 1e-12));
    assert_eq!(p.demand.profile.len(), 24);
    let pc = p.profile_cost.as_ref().unwrap();
    assert!(close(pc.hours, 24.0, 1e-9));
    // Cheaper per image than running the peak mix all day.
    let peak_day = p.mix.as_ref().unwrap().cost_per_hour * 24.0;
    assert!(pc.cost < peak_day, "{} vs {peak_day}", pc.cost);
    // And never below the cheapest pool's cost at its KEDA target.
    assert!(pc.cost_per_1000_images >= p.pools[0].cost_per_1000_images_at_target - 1e-9);
}

#[test]
fn the_throughput_unit_changes_costs_but_not_ordering_or_weights() {
    let out = scratch("units");
    let table = out.join("table.toml");
    let text = std::fs::read_to_string(fixtures().join("seed-published-table.toml"))
        .unwrap()
        .replace("images_per_minute", "images_per_second");
    std::fs::write(&table, text).unwrap();
    let mut a = plan_args(
        &["--slo", "1", "--demand", "600", "--weights", "inverse-cost"],
        &out,
    );
    a.tables = vec![table];
    let per_s = compute(&load_inputs(&a).unwrap()).unwrap();
    let per_min = seed_plan(&["--slo", "1", "--demand", "10", "--weights", "inverse-cost"]);
    assert_eq!(names(&per_s), names(&per_min));
    for (s, m) in per_s.pools.iter().zip(&per_min.pools) {
        assert_eq!(s.weight, m.weight);
        assert_eq!(s.node_pool_weight, m.node_pool_weight);
        assert!(close(
            s.cost_per_1000_images * 60.0,
            m.cost_per_1000_images,
            1e-9
        ));
    }
}

// The plan file is read by what deploys it: `deploy render --plan` checks
// it (format, ranges, weights summing to 1000) and renders the seed's five
// pools from it.
#[test]
fn deploy_renders_the_plan_it_writes() {
    let out = scratch("fragment");
    let a = plan_args(&["--slo", "1.0", "--demand", "10"], &out);
    let o = plan(&a).unwrap();
    let path = o.config_path.unwrap();
    let planned = anyaccel_deploy::Plan::from_path(&path).expect("deploy reads the plan");
    let f = planned.file();
    assert_eq!(f.format_version, anyaccel_deploy::plan::PLAN_FILE_VERSION);
    assert_eq!(
        f.plan.fallback_order,
        ["inf2", "trn1", "g5-compiled", "g6", "g5-eager"]
    );
    assert_eq!(f.pools.iter().map(|p| p.weight).sum::<u32>(), 1000);

    let config = fixtures().join("../deploy/examples/seed-planned.toml");
    let cfg = anyaccel_deploy::ClusterConfig::from_path_with_plan(&config, &planned)
        .expect("the seed's pools take the plan");
    for p in cfg.pools() {
        let want = planned.pool(p.name()).unwrap();
        assert_eq!(u32::from(p.weight()), want.weight, "{}", p.name());
        assert_eq!(p.max_replicas(), want.max_replicas, "{}", p.name());
        assert_eq!(
            p.node_pool_weight().map(u32::from),
            Some(want.node_pool_weight)
        );
    }
    let objs = anyaccel_deploy::render(&cfg).expect("renders");
    assert!(objs.iter().all(|o| {
        o.value()["metadata"]["annotations"][anyaccel_deploy::PLAN_SHA256_ANNOTATION]
            == planned.stamp().sha256.as_str()
    }));
    let md = std::fs::read_to_string(out.join("plan.md")).unwrap();
    assert!(
        md.contains("| inf2 | inf2.xlarge | neuron | 0.7582 |"),
        "{md}"
    );
}

// One feasible pool: a lone ALB target group takes at most 999, so its
// weight is 999, and the renderer must take what the planner wrote.
#[test]
fn a_one_pool_plan_renders() {
    let out = scratch("one-pool");
    // At 0.6 s only trn1 (0.51 s) meets the SLO.
    let o = plan(&plan_args(&["--slo", "0.6", "--demand", "10"], &out)).unwrap();
    assert_eq!(names(&o.plan), ["trn1"]);
    let path = o.config_path.expect("a feasible plan is written");
    let planned = anyaccel_deploy::Plan::from_path(&path).expect("deploy reads a one-pool plan");
    let f = planned.file();
    assert_eq!(f.pools.len(), 1);
    assert_eq!(f.pools[0].weight, 999);
    assert_eq!(anyaccel_deploy::plan::plan_weight_total(1), 999);
    assert_eq!(f.plan.fallback_order, ["trn1"]);

    // seed-planned.toml cut down to its trn1 pool and that pool's artifact.
    let seed =
        std::fs::read_to_string(fixtures().join("../deploy/examples/seed-planned.toml")).unwrap();
    let (head, _) = seed.split_once("[[artifacts]]").expect("artifacts");
    let config = format!(
        "{head}[[artifacts]]\nname = \"sd21-neuron\"\nsource = \"stabilityai/stable-diffusion-2-1-base\"\ntarget = \"neuron\"\nrepo = \"acme/sd21-anyaccel-neuron\"\n\n[[pools]]\nname = \"trn1\"\naccelerator = \"neuron\"\ninstance_types = [\"trn1.2xlarge\"]\nmin_replicas = 1\nartifact = \"sd21-neuron\"\n"
    );
    let cfg = anyaccel_deploy::ClusterConfig::from_toml_str_with_plan(&config, &planned)
        .expect("the trn1 pool takes the plan");
    assert_eq!(cfg.pools().len(), 1);
    assert_eq!(cfg.pools()[0].weight(), 999);
    let objs = anyaccel_deploy::render(&cfg).expect("renders");
    let ingress = objs
        .iter()
        .find(|o| o.kind() == "Ingress")
        .expect("an Ingress");
    let key = anyaccel_deploy::fleet::action_annotation("weighted-pools");
    let action: serde_json::Value = serde_json::from_str(
        ingress.value()["metadata"]["annotations"][key.as_str()]
            .as_str()
            .expect("the weighted action"),
    )
    .expect("action JSON");
    assert_eq!(
        action["forwardConfig"]["targetGroups"],
        serde_json::json!([{"serviceName": "anyaccel-trn1", "servicePort": "http", "weight": 999}])
    );
}

#[test]
fn bad_plan_arguments_are_named() {
    let out = scratch("badargs");
    for (extra, word) in [
        (&["--slo", "0", "--demand", "1"][..], "--slo"),
        (&["--slo", "1", "--demand", "0"][..], "--demand"),
        (&["--slo", "1"][..], "--demand"),
        (
            &["--slo", "1", "--demand", "1", "--headroom", "1"][..],
            "--headroom",
        ),
        (
            &["--slo", "1", "--demand", "1", "--max-replicas", "nope=1"][..],
            "nope",
        ),
    ] {
        let e = load_inputs(&plan_args(extra, &out)).unwrap_err();
        assert!(e.to_string().contains(word), "{extra:?}: {e}");
    }
}
