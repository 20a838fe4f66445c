//! Markdown for a bench run.

use crate::result::{BenchResult, fmt_num};
use std::fmt::Write;

fn secs(x: Option<f64>) -> String {
    x.map_or_else(|| "–".into(), |v| format!("{v:.3}"))
}

/// The run as a Markdown document: tags, one table row per level, the
/// breaking point, and the server's counts next to the client's.
pub fn bench_markdown(r: &BenchResult) -> String {
    let mut s = String::new();
    let tag = |t: &Option<String>| t.clone().unwrap_or_else(|| "–".into());
    let _ = writeln!(s, "# anyaccel bench: {}", r.target.url);
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "pool **{}**, instance type **{}**, accelerator **{}**, replicas {}; model {}; {} {} (result format {}); started {}",
        tag(&r.tags.pool),
        tag(&r.tags.instance_type),
        tag(&r.tags.accelerator),
        r.tags.replicas,
        r.target
            .model
            .as_ref()
            .map_or_else(|| "–".to_string(), |m| m.to_string()),
        r.tool.name,
        r.tool.version,
        r.format_version,
        r.started_at
    );
    let _ = writeln!(s);
    let mix: Vec<String> = r
        .settings
        .mix
        .requests
        .iter()
        .map(|e| format!("{} (weight {})", e.label(), fmt_num(e.weight)))
        .collect();
    let _ = writeln!(
        s,
        "SLO: p95 ≤ {} s with at most {}% errors. Mix: {}.",
        fmt_num(r.settings.slo_p95_s),
        fmt_num(r.settings.max_error_rate * 100.0),
        mix.join(", ")
    );
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "| level | requests | ok | images | errors | img/s | req/s | p50 s | p90 s | p95 s | p99 s | SLO | server requests | server images |"
    );
    let _ = writeln!(
        s,
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|:-:|---:|---:|"
    );
    for l in &r.levels {
        let errors = if l.errors_by_status.is_empty() {
            "0".to_string()
        } else {
            l.errors_by_status
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let lat = l.latency_s;
        let (srv_req, srv_img) = l.server.as_ref().map_or_else(
            || ("–".to_string(), "–".to_string()),
            |d| (fmt_num(d.requests), fmt_num(d.images)),
        );
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {:.3} | {:.3} | {} | {} | {} | {} | {} | {} | {} |",
            l.label,
            l.requests,
            l.ok,
            l.images,
            errors,
            l.throughput_images_per_s,
            l.throughput_requests_per_s,
            secs(lat.map(|x| x.p50)),
            secs(lat.map(|x| x.p90)),
            secs(lat.map(|x| x.p95)),
            secs(lat.map(|x| x.p99)),
            if l.meets_slo { "✓" } else { "✗" },
            srv_req,
            srv_img
        );
    }
    let _ = writeln!(s);
    match &r.breaking_point {
        Some(b) => {
            let _ = writeln!(
                s,
                "**Breaking point:** {} — {:.3} images/s at p95 {:.3} s (the highest throughput whose p95 stays within {} s).",
                b.label,
                b.throughput_images_per_s,
                b.p95_s,
                fmt_num(r.settings.slo_p95_s)
            );
        }
        None => {
            let _ = writeln!(
                s,
                "**Breaking point:** none — no level kept p95 within {} s with at most {}% errors.",
                fmt_num(r.settings.slo_p95_s),
                fmt_num(r.settings.max_error_rate * 100.0)
            );
        }
    }
    let timing: Vec<String> = r
        .levels
        .iter()
        .filter_map(|l| {
            let q = l.server_queue_time_s?;
            let i = l.server_inference_time_s?;
            Some(format!(
                "{}: queue p50 {:.3} s / p95 {:.3} s, inference p50 {:.3} s / p95 {:.3} s",
                l.label, q.p50, q.p95, i.p50, i.p95
            ))
        })
        .collect();
    if !timing.is_empty() {
        let _ = writeln!(s);
        let _ = writeln!(s, "Server timing headers (successful requests):");
        let _ = writeln!(s);
        for t in timing {
            let _ = writeln!(s, "- {t}");
        }
    }
    let early: Vec<String> = r
        .levels
        .iter()
        .filter_map(|l| Some(format!("{}: {}", l.label, l.stopped_early.as_ref()?)))
        .collect();
    if !early.is_empty() || !r.notes.is_empty() {
        let _ = writeln!(s);
        let _ = writeln!(s, "Notes:");
        let _ = writeln!(s);
        for n in early.iter().chain(r.notes.iter()) {
            let _ = writeln!(s, "- {n}");
        }
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "Latency is measured from when each request was due to when its whole answer was read, over successful requests; throughput counts images received per second of the level. Requests = sent + not sent (client_overflow); the server columns are the deltas of `{}` and `{}` on `/metrics` over the level.",
        anyaccel_metrics::REQUESTS_TOTAL,
        anyaccel_metrics::IMAGES_TOTAL
    );
    s
}
