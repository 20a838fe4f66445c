//! CloudWatch publishing against real peers: moto's CloudWatch server on
//! loopback for `PutMetricData`, and the Embedded Metric Format lines checked
//! against the structure the EMF specification requires.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyaccel_metrics::cloudwatch as cw;
use common::{free_port, repo, serve_with, venv_python};
use serde_json::{Value, json};

struct Moto(Child, String);
impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_moto() -> Moto {
    let port = free_port();
    let child = Command::new(venv_python())
        .args([
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("moto starts");
    let m = Moto(child, format!("http://127.0.0.1:{port}"));
    let t = Instant::now();
    while ureq::get(&format!("{}/moto-api/", m.1)).call().is_err() {
        assert!(t.elapsed() < Duration::from_secs(60), "moto never answered");
        std::thread::sleep(Duration::from_millis(200));
    }
    m
}

fn load(base: &str, requests: usize) -> usize {
    load_with(base, requests, 30)
}

fn load_with(base: &str, requests: usize, steps: u32) -> usize {
    let handles: Vec<_> = (0..requests)
        .map(|i| {
            let url = format!("{base}/v1/images/generations");
            std::thread::spawn(move || {
                let r: Value = ureq::post(&url)
                    .send_json(json!({"prompt": format!("cw {i}"), "steps": steps, "size": "128x128", "n": 2}))
                    .unwrap()
                    .into_json()
                    .unwrap();
                r["data"].as_array().unwrap().len()
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).sum()
}

fn query(moto: &Moto, metric: &str, stat: &str, dims: &[String]) -> Value {
    let out = Command::new(venv_python())
        .arg(repo().join("crates/anyaccel/tests/python/cloudwatch_query.py"))
        .args([moto.1.as_str(), cw::NAMESPACE, metric, stat, "60"])
        .args(dims)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn put_metric_data_reaches_cloudwatch_with_dimensions_and_answers_kedas_query() {
    let moto = start_moto();
    let s = serve_with(
        &[
            "--cloudwatch",
            "api",
            "--cloudwatch-endpoint",
            &moto.1,
            "--cloudwatch-region",
            "us-east-1",
            "--cloudwatch-interval-secs",
            "1",
            "--max-batch",
            "2",
        ],
        &[
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("ANYACCEL_POOL", "cw-pool"),
            ("ANYACCEL_ACCELERATOR", "cpu-amd64"),
        ],
        Stdio::null(),
    );
    // Several seconds of queued work, so the 1 s sampler sees a backlog.
    let images = load_with(&s.base, 8, 120);
    let dims = vec![
        format!("{}=cw-pool", cw::DIM_POOL),
        format!("{}=cpu-amd64", cw::DIM_ACCELERATOR),
        format!("{}=fixtures/models/tiny-sd15", cw::DIM_MODEL),
    ];
    // Published off the request path: wait for the sampler and publisher.
    let t = Instant::now();
    let (backlog, total_images) = loop {
        let b = query(&moto, cw::BACKLOG_SECONDS, "Maximum", &dims);
        let i = query(&moto, cw::IMAGES, "Sum", &dims);
        let total: f64 = i["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .sum();
        if total as usize >= images {
            break (b, total);
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "images never reached CloudWatch: {i}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(
        total_images as usize, images,
        "every image counted exactly once"
    );
    let max_backlog = backlog["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .fold(0.0, f64::max);
    assert!(
        max_backlog > 0.0,
        "the backlog under load was published: {backlog}"
    );
    // KEDA's trigger (Average over the period, same namespace, metric and dimensions) answers a number.
    let avg = query(&moto, cw::BACKLOG_SECONDS, "Average", &dims);
    assert!(!avg["values"].as_array().unwrap().is_empty(), "{avg}");
    let listed: Vec<String> = avg["dimensions"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            format!(
                "{}={}",
                d["Name"].as_str().unwrap(),
                d["Value"].as_str().unwrap()
            )
        })
        .collect();
    let mut want = dims.clone();
    want.sort();
    let mut got = listed;
    got.sort();
    assert_eq!(got, want);
}

#[test]
fn a_cloudwatch_outage_never_fails_a_request() {
    // Nothing listens on this port: every PutMetricData fails.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let s = serve_with(
        &[
            "--cloudwatch",
            "api",
            "--cloudwatch-endpoint",
            &dead,
            "--cloudwatch-region",
            "us-east-1",
            "--cloudwatch-interval-secs",
            "1",
        ],
        &[
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
        ],
        Stdio::null(),
    );
    for _ in 0..3 {
        let started = Instant::now();
        assert_eq!(load(&s.base, 2), 4);
        assert!(started.elapsed() < Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(1100));
    }
    assert_eq!(
        ureq::get(&format!("{}/health/ready", s.base))
            .call()
            .unwrap()
            .status(),
        200
    );
}

/// The rules of the EMF specification that a CloudWatch agent enforces.
fn check_emf(doc: &Value) -> Result<(), String> {
    let aws = doc.get("_aws").ok_or("no _aws member")?;
    let ts = aws
        .get("Timestamp")
        .and_then(Value::as_u64)
        .ok_or("_aws.Timestamp must be an integer (ms)")?;
    if ts < 1_600_000_000_000 {
        return Err(format!("Timestamp {ts} is not epoch milliseconds"));
    }
    let directives = aws
        .get("CloudWatchMetrics")
        .and_then(Value::as_array)
        .ok_or("CloudWatchMetrics must be an array")?;
    if directives.is_empty() {
        return Err("CloudWatchMetrics is empty".into());
    }
    for d in directives {
        let ns = d
            .get("Namespace")
            .and_then(Value::as_str)
            .ok_or("Namespace must be a string")?;
        if ns.is_empty() || ns.len() > 255 {
            return Err("Namespace must have 1-255 characters".into());
        }
        let sets = d
            .get("Dimensions")
            .and_then(Value::as_array)
            .ok_or("Dimensions must be an array")?;
        for set in sets {
            let set = set.as_array().ok_or("each DimensionSet must be an array")?;
            if set.len() > 30 {
                return Err("a DimensionSet has more than 30 dimensions".into());
            }
            for k in set {
                let k = k.as_str().ok_or("dimension names must be strings")?;
                if !doc.get(k).is_some_and(Value::is_string) {
                    return Err(format!("dimension {k} is not a string member of the root"));
                }
            }
        }
        let metrics = d
            .get("Metrics")
            .and_then(Value::as_array)
            .ok_or("Metrics must be an array")?;
        if metrics.is_empty() || metrics.len() > 100 {
            return Err("Metrics must have 1-100 entries".into());
        }
        for m in metrics {
            let name = m
                .get("Name")
                .and_then(Value::as_str)
                .ok_or("metric Name must be a string")?;
            if let Some(u) = m.get("Unit") {
                let u = u.as_str().ok_or("Unit must be a string")?;
                if !["Seconds", "Count", "Milliseconds", "None"].contains(&u) {
                    return Err(format!("unexpected unit {u}"));
                }
            }
            if !doc.get(name).is_some_and(Value::is_number) {
                return Err(format!("metric {name} has no numeric value at the root"));
            }
        }
    }
    Ok(())
}

#[test]
fn emf_lines_follow_the_specification() {
    let s = serve_with(
        &["--cloudwatch", "emf", "--cloudwatch-interval-secs", "1"],
        &[("ANYACCEL_POOL", "emf-pool")],
        Stdio::piped(),
    );
    let images = load(&s.base, 3);
    let mut s = s;
    let stdout = s.child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut counted = 0.0;
    let mut docs = 0;
    let t = Instant::now();
    while counted < images as f64 {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "EMF never reported {images} images (saw {counted})"
        );
        let Ok(line) = rx.recv_timeout(Duration::from_secs(5)) else {
            continue;
        };
        let doc: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {line}"));
        check_emf(&doc).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!(doc[cw::DIM_POOL], "emf-pool");
        counted += doc[cw::IMAGES].as_f64().unwrap_or(0.0);
        docs += 1;
    }
    assert_eq!(counted as usize, images);
    assert!(docs >= 1);
    // And the checker itself rejects what the spec forbids.
    assert!(check_emf(&json!({"_aws": {"Timestamp": 1, "CloudWatchMetrics": []}})).is_err());
    assert!(
        check_emf(
            &json!({"_aws": {"Timestamp": 1_700_000_000_000u64, "CloudWatchMetrics": [
        {"Namespace": "a", "Dimensions": [["Pool"]], "Metrics": [{"Name": "X"}]}]}, "X": 1})
        )
        .is_err()
    );
}
