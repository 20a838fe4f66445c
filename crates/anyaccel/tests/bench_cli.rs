//! `anyaccel bench` against the real server with the tiny model: what the
//! client reports agrees with the server's own metrics for the same run.

mod common;

use std::process::Command;

use common::{repo, serve};
use serde_json::Value;

#[test]
fn bench_numbers_agree_with_the_servers_metrics() {
    let s = serve(&[]);
    let out = std::env::temp_dir().join(format!("anyaccel-bench-e2e-{}", std::process::id()));
    let status = Command::new(env!("CARGO_BIN_EXE_anyaccel"))
        .args([
            "bench",
            "--url",
            &s.base,
            "--concurrency",
            "1,3",
            "--rate",
            "4",
            "--duration",
            "2",
        ])
        .args([
            "--size",
            "64x64",
            "--steps",
            "4",
            "--n",
            "2",
            "--slo",
            "5",
            "--no-progress",
            "--quiet",
        ])
        .args(["--pool", "local", "--instance-type", "test.cpu", "--out"])
        .arg(&out)
        .current_dir(repo())
        .status()
        .unwrap();
    assert!(status.success());
    let result: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("result.json")).unwrap()).unwrap();
    let levels = result["levels"].as_array().unwrap();
    assert_eq!(levels.len(), 3);
    for l in levels {
        let server = &l["server"];
        assert!(server.is_object(), "metrics were scraped: {l}");
        let ok = l["ok"].as_u64().unwrap();
        assert!(ok > 0, "{l}");
        assert_eq!(
            server["requests"].as_f64().unwrap() as u64,
            l["requests"].as_u64().unwrap(),
            "{}",
            l["label"]
        );
        assert_eq!(
            server["images"].as_f64().unwrap() as u64,
            l["images"].as_u64().unwrap(),
            "{}",
            l["label"]
        );
        assert_eq!(l["images"].as_u64().unwrap(), 2 * ok);
        // Unwrap first: as Options, `None <= None` holds, so a level with
        // no latency summary (null) would pass a direct comparison.
        let p = &l["latency_s"];
        let p50 = p["p50"].as_f64().unwrap_or_else(|| panic!("no p50: {l}"));
        let p95 = p["p95"].as_f64().unwrap_or_else(|| panic!("no p95: {l}"));
        assert!(p50 <= p95, "{}: p50 {p50} > p95 {p95}", l["label"]);
    }
    assert!(out.join("result.md").is_file());
    assert!(out.join("latency-throughput.png").is_file());
    std::fs::remove_dir_all(out).ok();
}
