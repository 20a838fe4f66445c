//! `anyaccel bench` against a real local HTTP server that answers like the
//! API: counts, overload handling, breaking point, outputs, and agreement
//! with the server's own `/metrics`.

mod common;

use anyaccel_bench::result::Load;
use anyaccel_bench::{BenchArgs, BenchError, BenchResult, bench};
use clap::Parser;
use common::{Behaviour, FakeServer, scratch};
use std::time::Duration;

fn args(url: &str, out: &std::path::Path, extra: &[&str]) -> BenchArgs {
    let mut v: Vec<String> = vec![
        "bench".into(),
        "--url".into(),
        url.into(),
        "--out".into(),
        out.display().to_string(),
        "--no-progress".into(),
        "--quiet".into(),
        "--pause".into(),
        "0.1".into(),
        "--metrics-settle".into(),
        "0.05".into(),
        "--max-retry-wait".into(),
        "0.05".into(),
    ];
    v.extend(extra.iter().map(|s| s.to_string()));
    BenchArgs::try_parse_from(v).unwrap()
}

fn png_ok(p: &std::path::Path) {
    let bytes = std::fs::read(p).unwrap();
    assert!(
        bytes.len() > 5_000,
        "{} is only {} bytes",
        p.display(),
        bytes.len()
    );
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{}", p.display());
}

#[test]
fn closed_open_and_wave_agree_with_the_servers_metrics() {
    let srv = FakeServer::start(Behaviour {
        service: Duration::from_millis(20),
        reject_every: Some(7),
        serialize: false,
    });
    let out = scratch("all-modes");
    let a = args(
        &srv.url,
        &out,
        &[
            "--concurrency",
            "1,3",
            "--rate",
            "15",
            "--duration",
            "1.2",
            "--wave",
            "cosine",
            "--wave-min-rate",
            "2",
            "--wave-max-rate",
            "20",
            "--wave-duration",
            "2",
            "--bucket",
            "0.5",
            "--n",
            "2",
            "--slo",
            "0.5",
            "--max-error-rate",
            "0.2",
            "--pool",
            "fake",
            "--instance-type",
            "test.small",
        ],
    );
    let o = bench(&a).unwrap();
    let r = &o.result;
    assert_eq!(r.levels.len(), 4);
    assert_eq!(
        r.tags.accelerator.as_deref(),
        Some("cpu"),
        "taken from /info"
    );
    assert_eq!(r.tags.pool.as_deref(), Some("fake"));

    let mut client_sent = 0;
    let mut client_images = 0;
    for l in &r.levels {
        let srv_delta = l.server.as_ref().expect("metrics were scraped");
        // The server counted exactly what the client sent and received.
        assert_eq!(srv_delta.requests, l.sent() as f64, "{}", l.label);
        assert_eq!(srv_delta.images, l.images as f64, "{}", l.label);
        // Every 7th request gets a 429, so any 7 in a row hold one: both
        // sides must have counted some (defaulting a missing count to 0
        // would let 0 == 0 pass when neither saw a rejection).
        assert!(l.sent() >= 7, "{}: only {} sent", l.label, l.sent());
        let srv_429 = srv_delta
            .requests_by_status
            .get("429")
            .copied()
            .unwrap_or_else(|| panic!("{}: the server counted no 429", l.label));
        let cli_429 = l
            .errors_by_status
            .get("429")
            .copied()
            .unwrap_or_else(|| panic!("{}: the client counted no 429", l.label));
        assert_eq!(srv_429, cli_429 as f64, "{}", l.label);
        assert!(l.ok > 0, "{}", l.label);
        assert_eq!(l.images, 2 * l.ok, "n = 2 images per request");
        let lat = l.latency_s.unwrap();
        assert!(lat.p50 >= 0.019, "{}: p50 {}", l.label, lat.p50);
        assert!(lat.p50 <= lat.p90 && lat.p90 <= lat.p95 && lat.p95 <= lat.p99);
        assert!(l.server_inference_time_s.is_some());
        assert!(l.throughput_images_per_s > 0.0);
        client_sent += l.sent();
        client_images += l.images;
    }
    // And the whole run (plus the one warm-up request) matches the server's totals.
    let by_status = srv.generations_by_status();
    assert_eq!(by_status.values().sum::<u64>(), client_sent + 1);
    assert_eq!(srv.images(), client_images + 2);
    assert!(
        by_status.get(&429).copied().unwrap_or(0) > 0,
        "some requests were rejected"
    );
    // Every 7th request is rejected: ~14% errors.
    let rejected: u64 = r
        .levels
        .iter()
        .map(|l| l.errors_by_status.get("429").copied().unwrap_or(0))
        .sum();
    assert!(rejected > 0);
    assert!(r.levels.iter().any(|l| l.max_retry_after_s == Some(1.0)));

    // The open loop offered ~15 req/s for 1.2 s.
    let open = &r.levels[2];
    assert!(matches!(open.load, Load::Open { .. }));
    assert!((5..=40).contains(&open.requests), "{}", open.requests);
    // The wave has its time series: 4 buckets of 0.5 s, peak rate first.
    let wave = &r.levels[3];
    assert_eq!(wave.timeseries.len(), 4);
    assert!(wave.timeseries[0].offered_rate > wave.timeseries[2].offered_rate);
    assert_eq!(
        wave.timeseries.iter().map(|b| b.requests).sum::<u64>(),
        wave.requests
    );

    // Outputs: JSON that reads back, Markdown, PNGs.
    let back = BenchResult::read(&o.json).unwrap();
    assert_eq!(back.format_version, anyaccel_bench::FORMAT_VERSION);
    assert_eq!(back.levels.len(), 4);
    assert_eq!(back.tool.name, "anyaccel-bench");
    let md = std::fs::read_to_string(&o.markdown).unwrap();
    assert!(md.contains("| level | requests |"), "{md}");
    assert!(md.contains("closed c=3"));
    assert!(md.contains("Breaking point"));
    assert_eq!(o.plots.len(), 2);
    for p in &o.plots {
        png_ok(p);
    }
    assert!(out.join("wave.png").exists());
    assert!(out.join("latency-throughput.png").exists());
}

#[test]
fn breaking_point_is_found_where_latency_crosses_the_slo() {
    // One request at a time, 50 ms each: p95 grows with the clients.
    let srv = FakeServer::start(Behaviour {
        service: Duration::from_millis(50),
        reject_every: None,
        serialize: true,
    });
    let out = scratch("breaking");
    let a = args(
        &srv.url,
        &out,
        &[
            "--concurrency",
            "1,6",
            "--duration",
            "1.5",
            "--slo",
            "0.15",
            "--no-plots",
        ],
    );
    let r = bench(&a).unwrap().result;
    let c1 = &r.levels[0];
    let c6 = &r.levels[1];
    assert!(c1.meets_slo, "c=1 p95 {:?}", c1.latency_s);
    assert!(!c6.meets_slo, "c=6 p95 {:?}", c6.latency_s);
    assert!(c6.latency_s.unwrap().p95 > 0.2);
    let bp = r.breaking_point.expect("c=1 meets the SLO");
    assert_eq!(bp.level, 0);
    assert_eq!(bp.label, "closed c=1");
    assert!(bp.p95_s <= 0.15);
    // A serial 50 ms server makes at most ~20 images/s.
    assert!(c6.throughput_images_per_s < 22.0);
}

#[test]
fn a_dead_server_is_a_clear_error() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let out = scratch("dead");
    let url = format!("http://127.0.0.1:{port}");
    let a = args(
        &url,
        &out,
        &["--concurrency", "1", "--duration", "1", "--timeout", "2"],
    );
    let e = bench(&a).unwrap_err();
    assert!(matches!(e, BenchError::Unreachable { .. }), "{e}");
    assert!(e.to_string().contains(&url), "{e}");
}

#[test]
fn the_request_cap_stops_the_run() {
    let srv = FakeServer::start(Behaviour::default());
    let out = scratch("cap");
    let a = args(
        &srv.url,
        &out,
        &[
            "--concurrency",
            "2,2",
            "--duration",
            "3",
            "--max-requests",
            "6",
            "--no-plots",
        ],
    );
    let r = bench(&a).unwrap().result;
    let sent: u64 = r.levels.iter().map(|l| l.sent()).sum();
    // One warm-up plus at most five measured requests.
    assert!(sent <= 5, "{sent}");
    assert_eq!(srv.generations_by_status().values().sum::<u64>(), sent + 1);
    assert!(r.levels[0].stopped_early.is_some());
    assert!(
        r.notes.iter().any(|n| n.contains("--max-requests")),
        "{:?}",
        r.notes
    );
}

#[test]
fn unsafe_loads_send_nothing_without_the_flag() {
    let srv = FakeServer::start(Behaviour::default());
    let out = scratch("unsafe");
    let a = args(&srv.url, &out, &["--rate", "100", "--duration", "1"]);
    let e = bench(&a).unwrap_err();
    assert!(matches!(e, BenchError::Safety(_)), "{e}");
    assert!(srv.generations_by_status().is_empty());
}

#[test]
fn a_request_mix_is_followed() {
    let srv = FakeServer::start(Behaviour {
        service: Duration::from_millis(5),
        ..Behaviour::default()
    });
    let out = scratch("mix");
    let mix = out.join("mix.json");
    std::fs::write(
        &mix,
        r#"{"requests":[{"size":"256x256","steps":4,"n":1,"weight":1},{"size":"512x512","steps":4,"n":3,"weight":1}]}"#,
    )
    .unwrap();
    let a = args(
        &srv.url,
        &out,
        &[
            "--concurrency",
            "2",
            "--duration",
            "1",
            "--mix",
            mix.to_str().unwrap(),
            "--no-plots",
        ],
    );
    let r = bench(&a).unwrap().result;
    let l = &r.levels[0];
    // Both kinds were sent: images per request is strictly between 1 and 3.
    let per_req = l.images as f64 / l.ok as f64;
    assert!(per_req > 1.2 && per_req < 2.8, "{per_req}");
    assert_eq!(r.settings.mix.requests.len(), 2);
}
