//! The whole loop: bench two pools, then plan from their result files.

mod common;

use anyaccel_bench::plan::{PlanArgs, load_inputs};
use anyaccel_bench::{BenchArgs, BenchError, bench, plan};
use clap::Parser;
use common::{Behaviour, FakeServer, scratch};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn run(srv: &FakeServer, out: &Path, pool: &str, instance: &str, conc: &str) -> PathBuf {
    let a = BenchArgs::try_parse_from([
        "bench",
        "--url",
        &srv.url,
        "--out",
        out.to_str().unwrap(),
        "--concurrency",
        conc,
        "--duration",
        "1",
        "--pause",
        "0",
        "--slo",
        "0.2",
        "--pool",
        pool,
        "--instance-type",
        instance,
        "--accelerator",
        "fake",
        "--no-progress",
        "--no-plots",
        "--quiet",
    ])
    .unwrap();
    bench(&a).unwrap().json
}

#[test]
fn bench_results_feed_plan() {
    // "fast" serves 4 at once in 40 ms; "slow" one at a time in 60 ms.
    let fast = FakeServer::start(Behaviour {
        service: Duration::from_millis(40),
        ..Behaviour::default()
    });
    let slow = FakeServer::start(Behaviour {
        service: Duration::from_millis(60),
        reject_every: None,
        serialize: true,
    });
    let dir = scratch("loop");
    let fast_a = run(&fast, &dir.join("fast-a"), "fast", "fast.large", "1,2");
    let fast_b = run(&fast, &dir.join("fast-b"), "fast", "fast.large", "4");
    let slow_r = run(&slow, &dir.join("slow"), "slow", "slow.small", "1,4");
    let prices = dir.join("prices.toml");
    std::fs::write(
        &prices,
        "currency = \"USD\"\n[instances.\"fast.large\"]\non_demand = 4.0\nspot = 1.6\n[instances.\"slow.small\"]\non_demand = 0.5\nspot = 0.2\n",
    )
    .unwrap();
    let out = dir.join("plan");
    let args = PlanArgs::try_parse_from([
        "plan",
        "--results",
        fast_a.to_str().unwrap(),
        fast_b.to_str().unwrap(),
        slow_r.to_str().unwrap(),
        "--prices",
        prices.to_str().unwrap(),
        "--slo",
        "0.2",
        "--demand",
        "50",
        "--capacity-type",
        "spot",
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ])
    .unwrap();
    let inputs = load_inputs(&args).unwrap();
    assert_eq!(inputs.pools.len(), 2, "two files of one pool are merged");
    let fast_in = inputs.pools.iter().find(|p| p.name == "fast").unwrap();
    assert_eq!(fast_in.levels.len(), 3);
    assert_eq!(fast_in.sources.len(), 2);

    let o = plan(&args).unwrap();
    let p = &o.plan;
    assert!(p.is_feasible(), "{}", o.report);
    let fast_p = p.pools.iter().find(|x| x.name == "fast").unwrap();
    let slow_p = p.pools.iter().find(|x| x.name == "slow").unwrap();
    // Fast's capacity comes from its c=4 level (~100 images/s), slow's from
    // c=1 or c=2 at most (~16 images/s; c=4 queues past the SLO).
    assert!(
        fast_p.capacity_level.contains("c=4"),
        "{}",
        fast_p.capacity_level
    );
    assert!(fast_p.capacity_images_per_s > 30.0);
    assert!(slow_p.capacity_images_per_s < 18.0);
    assert_eq!(slow_p.capacity_level, "closed c=1");
    // Spot prices were used.
    assert_eq!(fast_p.price_per_hour, 1.6);
    // Costs agree with the arithmetic, and the ordering with the costs.
    for x in &p.pools {
        let c = x.price_per_hour / (x.capacity_images_per_s * 3600.0) * 1000.0;
        assert!((x.cost_per_1000_images - c).abs() < 1e-12);
    }
    assert!(p.pools[0].cost_per_1000_images <= p.pools[1].cost_per_1000_images);
    assert_eq!(p.pools[0].node_pool_weight, 100);
    assert_eq!(p.pools[1].node_pool_weight, 90);
    assert!(o.config_path.is_some());
    assert!(out.join("plan.md").exists());

    // A result without an instance type cannot be priced.
    let untagged = scratch("untagged");
    let a = BenchArgs::try_parse_from([
        "bench",
        "--url",
        &fast.url,
        "--out",
        untagged.to_str().unwrap(),
        "--concurrency",
        "1",
        "--duration",
        "0.3",
        "--no-progress",
        "--no-plots",
        "--quiet",
    ])
    .unwrap();
    let r = bench(&a).unwrap().json;
    let mut args2 = args.clone();
    args2.results = vec![r];
    let e = load_inputs(&args2).unwrap_err();
    assert!(matches!(e, BenchError::BadInput { .. }), "{e}");
    assert!(e.to_string().contains("--instance-type"), "{e}");
}
