//! Fleet-wide jobs: `anyaccel serve` processes sharing one real
//! `redis-server` (Debian's, installed by scripts/setup-test-env.sh, started
//! here on loopback with an append-only file so a restart keeps its data).

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::redis::{Redis, signal};
use common::{Server, metric, serve_with};
use serde_json::{Value, json};

/// A replica named `name` on `redis`'s queue `queue`.
fn replica(redis: &Redis, queue: &str, name: &str, extra: &[&str]) -> Server {
    let mut args = vec![
        "--redis-url",
        &redis.url(),
        "--redis-queue",
        queue,
        "--redis-consumer",
        name,
        "--redis-visibility-timeout-secs",
        "2",
        "--checkpoint-every-steps",
        "2",
        "--c2pa",
        "off",
        "--max-batch",
        "1",
        "--sizes",
        "256x256",
    ]
    .into_iter()
    .map(str::to_string)
    .collect::<Vec<_>>();
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    serve_with(&refs, &[], Stdio::null())
}

fn post(base: &str, path: &str, body: &Value, key: Option<&str>) -> (u16, Value) {
    let mut req = ureq::post(&format!("{base}{path}"));
    if let Some(k) = key {
        req = req.set("Idempotency-Key", k);
    }
    match req.send_json(body.clone()) {
        Ok(r) => (r.status(), r.into_json().unwrap_or(Value::Null)),
        Err(ureq::Error::Status(s, r)) => (s, r.into_json().unwrap_or(Value::Null)),
        Err(e) => panic!("POST {path}: {e}"),
    }
}

fn get(base: &str, path: &str) -> (u16, Value) {
    match ureq::get(&format!("{base}{path}")).call() {
        Ok(r) => (r.status(), r.into_json().unwrap_or(Value::Null)),
        Err(ureq::Error::Status(s, r)) => (s, r.into_json().unwrap_or(Value::Null)),
        Err(e) => panic!("GET {path}: {e}"),
    }
}

fn submit(base: &str, body: &Value) -> String {
    let (status, v) = post(base, "/v1/jobs", body, None);
    assert_eq!(status, 202, "{v}");
    v["id"].as_str().expect("job id").to_string()
}

/// Polls until `done` holds for the job's view (through `base`).
fn wait_for(base: &str, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let t = Instant::now();
    loop {
        let (status, v) = get(base, &format!("/v1/jobs/{id}"));
        if status == 200 && done(&v) {
            return v;
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "job {id} never {what}: {status} {v}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn finished(base: &str, id: &str) -> Value {
    wait_for(base, id, "finished", |v| {
        matches!(
            v["status"].as_str(),
            Some("completed" | "failed" | "cancelled")
        )
    })
}

fn images_of(v: &Value) -> Vec<String> {
    v["result"]["images"]
        .as_array()
        .expect("a completed job has images")
        .iter()
        .map(|i| i["b64_json"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// A job long enough on the tiny model to catch mid-way.
fn long_job(seed: u64) -> Value {
    json!({"prompt": "a lighthouse", "size": "256x256", "n": 4, "steps": 150, "seed": seed, "scheduler": "euler_a"})
}

fn the_one<'a>(replicas: &'a mut [(&str, Server)], name: &str) -> &'a mut Server {
    &mut replicas
        .iter_mut()
        .find(|(n, _)| *n == name)
        .expect("a known replica")
        .1
}

#[test]
fn any_replica_reads_streams_and_cancels_any_job() {
    let redis = Redis::start();
    let a = replica(&redis, "share", "a", &[]);
    let b = replica(&redis, "share", "b", &[]);
    let c = replica(&redis, "share", "c", &[]);

    let info = get(&b.base, "/info").1;
    assert_eq!(info["jobs"]["backend"], "redis");
    assert_eq!(info["jobs"]["stream"], "anyaccel:queue:{share}:jobs");

    // Submitted to A, read through B and C.
    let id = submit(
        &a.base,
        &json!({"prompt": "a fox", "size": "64x64", "steps": 3, "seed": 5}),
    );
    let via_b = finished(&b.base, &id);
    assert_eq!(via_b["status"], "completed", "{via_b}");
    let via_c = get(&c.base, &format!("/v1/jobs/{id}")).1;
    assert_eq!(images_of(&via_b), images_of(&via_c));
    assert_eq!(via_c["result"]["images"][0]["seed"], 5);

    // Streamed through C from the start to the end.
    let id = submit(
        &a.base,
        &json!({"prompt": "a stream", "size": "64x64", "steps": 6, "preview_every": 2}),
    );
    let resp = ureq::get(&format!("{}/v1/jobs/{id}/events", c.base))
        .call()
        .expect("events");
    let mut names = Vec::new();
    let mut previews = Vec::new();
    for line in BufReader::new(resp.into_reader()).lines() {
        let line = line.expect("sse line");
        if let Some(name) = line.strip_prefix("event: ") {
            names.push(name.to_string());
        }
        if let Some(data) = line.strip_prefix("data: ")
            && names.last().is_some_and(|n| n == "preview")
        {
            previews.push(serde_json::from_str::<Value>(data).expect("preview json"));
        }
    }
    // Previews travel through Redis encoded, as the runner's replica made them.
    assert_eq!(previews.len(), 2, "{names:?}");
    assert!(
        previews
            .iter()
            .all(|p| p["b64_json"].as_str().is_some_and(|b| b.len() > 100))
    );
    assert_eq!(
        names.last().map(String::as_str),
        Some("completed"),
        "{names:?}"
    );
    assert!(names.iter().any(|n| n == "step"), "{names:?}");

    // Cancelled through B while it runs (on whichever replica took it).
    let id = submit(&a.base, &long_job(9));
    wait_for(&c.base, &id, "started", |v| {
        v["progress"]["step"].as_u64() > Some(0)
    });
    let req = ureq::delete(&format!("{}/v1/jobs/{id}", b.base));
    let v: Value = req.call().expect("cancel").into_json().expect("json");
    assert_eq!(v["status"], "cancelled", "{v}");
    assert_eq!(
        get(&a.base, &format!("/v1/jobs/{id}")).1["status"],
        "cancelled"
    );

    // An idempotency key retried on another replica returns the same job.
    let body = json!({"prompt": "once", "size": "64x64", "steps": 2});
    let (s1, first) = post(&a.base, "/v1/jobs", &body, Some("retry-me"));
    let (s2, again) = post(&c.base, "/v1/jobs", &body, Some("retry-me"));
    assert_eq!((s1, s2), (202, 202));
    assert_eq!(first["id"], again["id"]);

    // Ids never issued, and bad input, answer as without Redis.
    for s in [&a, &b, &c] {
        let (status, v) = get(&s.base, "/v1/jobs/job-00000000deadbeef");
        assert_eq!(status, 404, "{v}");
    }
    let (status, v) = post(
        &b.base,
        "/v1/jobs",
        &json!({"prompt": "x", "size": "7x7"}),
        None,
    );
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["param"], "size");
    let (status, v) = post(
        &b.base,
        "/v1/jobs",
        &json!({"prompt": "x", "preview_every": 0}),
        None,
    );
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["param"], "preview_every");
}

#[test]
fn a_killed_replica_s_job_resumes_elsewhere_and_draws_the_same_image() {
    let redis = Redis::start();
    let mut replicas = [
        ("a", replica(&redis, "kill", "a", &[])),
        ("b", replica(&redis, "kill", "b", &[])),
    ];
    let id = submit(&replicas[0].1.base, &long_job(21));
    let running = wait_for(&replicas[1].1.base, &id, "passed a checkpoint", |v| {
        v["status"] == "running" && v["progress"]["step"].as_u64() >= Some(6)
    });
    let owner = running["replica"]
        .as_str()
        .expect("a running job names its replica")
        .to_string();
    let victim = the_one(&mut replicas, &owner);
    victim.child.kill().expect("SIGKILL");
    let _ = victim.child.wait();
    let survivor = &replicas
        .iter()
        .find(|(n, _)| *n != owner)
        .expect("survivor")
        .1;

    let done = finished(&survivor.base, &id);
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(
        metric(&survivor.base, "anyaccel_queue_jobs_claimed_total"),
        1.0
    );
    let saved = metric(&survivor.base, "anyaccel_queue_resume_steps_saved_total");
    assert!(saved >= 6.0, "resumed after {saved} steps");

    // The same request, uninterrupted, on the survivor.
    let again = submit(&survivor.base, &long_job(21));
    let reference = finished(&survivor.base, &again);
    assert_eq!(images_of(&done), images_of(&reference));
}

#[test]
fn sigterm_hands_a_long_job_back_and_another_replica_finishes_it() {
    let redis = Redis::start();
    let mut replicas = [
        (
            "a",
            replica(&redis, "term", "a", &["--drain-timeout-secs", "1"]),
        ),
        (
            "b",
            replica(&redis, "term", "b", &["--drain-timeout-secs", "1"]),
        ),
    ];
    let id = submit(&replicas[0].1.base, &long_job(33));
    let running = wait_for(&replicas[0].1.base, &id, "passed a checkpoint", |v| {
        v["status"] == "running" && v["progress"]["step"].as_u64() >= Some(4)
    });
    let owner = running["replica"].as_str().expect("replica").to_string();
    let leaving = the_one(&mut replicas, &owner);
    signal(leaving.child.id(), "TERM");
    let code = leaving.child.wait().expect("exits");
    assert!(code.success(), "the drained replica exits 0: {code}");
    let survivor = &replicas
        .iter()
        .find(|(n, _)| *n != owner)
        .expect("survivor")
        .1;

    let done = finished(&survivor.base, &id);
    assert_eq!(done["status"], "completed", "{done}");
    // Handed back, not claimed after a timeout, and resumed from its checkpoint.
    assert_eq!(
        metric(&survivor.base, "anyaccel_queue_jobs_claimed_total"),
        0.0
    );
    assert!(metric(&survivor.base, "anyaccel_queue_resume_steps_saved_total") >= 4.0);
    let again = submit(&survivor.base, &long_job(33));
    assert_eq!(
        images_of(&done),
        images_of(&finished(&survivor.base, &again))
    );
}

#[test]
fn redis_restarts_lose_no_job_and_an_outage_only_stops_the_jobs_api() {
    let mut redis = Redis::start();
    let a = replica(&redis, "outage", "a", &[]);
    let b = replica(&redis, "outage", "b", &[]);
    let long = submit(&a.base, &long_job(40));
    let short: Vec<String> = (0..3)
        .map(|i| {
            submit(
                &b.base,
                &json!({"prompt": "short", "size": "64x64", "steps": 4, "seed": i}),
            )
        })
        .collect();
    wait_for(&a.base, &long, "started", |v| {
        v["progress"]["step"].as_u64() > Some(0)
    });
    redis.restart();
    for id in short.iter().chain([&long]) {
        let v = finished(&b.base, id);
        assert_eq!(v["status"], "completed", "{v}");
    }

    redis.stop();
    let (status, v) = post(
        &a.base,
        "/v1/jobs",
        &json!({"prompt": "x", "size": "64x64"}),
        None,
    );
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["error"]["code"], "queue_unavailable");
    match ureq::post(&format!("{}/v1/jobs", a.base)).send_json(json!({"prompt": "x"})) {
        Err(ureq::Error::Status(503, r)) => assert!(r.header("retry-after").is_some()),
        other => panic!("expected 503, got {:?}", other.map(|r| r.status())),
    }
    let (status, v) = post(
        &a.base,
        "/v1/images/generations",
        &json!({"prompt": "still here", "size": "64x64", "steps": 2}),
        None,
    );
    assert_eq!(status, 200, "{v}");
    let (status, health) = get(&a.base, "/health/ready");
    assert_eq!(status, 200);
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(get(&b.base, "/info").1["jobs"]["connected"], false);
}
