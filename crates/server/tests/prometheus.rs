//! A real Prometheus (Debian's package) scrapes the server on loopback while
//! load runs; the PromQL that the rendered KEDA ScaledObjects use is asked
//! through `/api/v1/query`, as KEDA's Prometheus scaler does.

mod common;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{TestServer, config, start};
use serde_json::{Value, json};

struct Prometheus {
    child: Child,
    base: String,
    _dir: TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct TempDir(std::path::PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn start_prometheus(target: &str) -> Prometheus {
    let bin = which("prometheus").expect("prometheus is not installed: run scripts/setup-test-env.sh (the README's test command does)");
    let dir = std::env::temp_dir().join(format!("anyaccel-prom-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: anyaccel\n    static_configs:\n      - targets: ['{target}']\n"
    );
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(bin)
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus starts");
    let p = Prometheus {
        child,
        base: format!("http://127.0.0.1:{port}"),
        _dir: TempDir(dir),
    };
    let t = Instant::now();
    while ureq::get(&format!("{}/-/ready", p.base)).call().is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "prometheus never became ready"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    p
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| std::path::Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// Runs an instant query as KEDA does; returns the values of the result vector.
fn query(p: &Prometheus, promql: &str) -> Vec<f64> {
    let resp: Value = ureq::get(&format!("{}/api/v1/query", p.base))
        .query("query", promql)
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(resp["status"], "success", "{resp}");
    resp["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["value"][1].as_str().unwrap().parse::<f64>().unwrap())
        .collect()
}

/// Waits until the query answers exactly one series satisfying `pred`.
fn wait_for(p: &Prometheus, promql: &str, what: &str, pred: impl Fn(f64) -> bool) -> f64 {
    let t = Instant::now();
    loop {
        let v = query(p, promql);
        if v.len() == 1 && pred(v[0]) {
            return v[0];
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "{what}: `{promql}` answered {v:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn keda_queries_follow_the_load() {
    let mut c = config();
    c.batcher.max_batch_images = 4;
    c.batcher.max_queue = 64;
    let s = start(c);
    // The counters exist before Prometheus first looks, so rates see all the load.
    s.post_json(
        "/v1/images/generations",
        &json!({"prompt": "first", "steps": 1}),
    );
    let prom = start_prometheus(s.base.trim_start_matches("http://"));
    let pool = "test";
    let backlog = anyaccel_metrics::backlog_query(pool);
    let depth = anyaccel_metrics::queue_depth_query(pool);
    let rate = anyaccel_metrics::request_rate_query(pool);
    wait_for(&prom, &depth, "idle queue", |v| v == 0.0);

    // Saturate: more closed-loop clients than one batch holds.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let load_started = Instant::now();
    let clients: Vec<_> = (0..6)
        .map(|i| {
            let (stop, done, url) = (stop.clone(), done.clone(), s.url("/v1/images/generations"));
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let r = TestServer::agent()
                        .post(&url)
                        .send_json(json!({"prompt": format!("load {i}"), "steps": 40, "size": "128x128", "n": 4}));
                    assert_eq!(r.map(|r| r.status()).unwrap_or(0), 200);
                    done.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    let busy_backlog = wait_for(&prom, &backlog, "backlog while saturated", |v| v > 0.0);
    let busy_depth = wait_for(&prom, &depth, "queue depth while saturated", |v| v > 0.0);
    std::thread::sleep(Duration::from_secs(12));
    // rate(...[1m]) is the increase over the last minute divided by 60 s; all
    // of this load falls inside that minute.
    assert!(load_started.elapsed() < Duration::from_secs(55));
    let measured_rate = done.load(Ordering::SeqCst) as f64 / 60.0;
    let seen_rate = wait_for(&prom, &rate, "request rate", |v| v > 0.0);
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    println!(
        "saturated: backlog {busy_backlog:.3}s, depth {busy_depth}; request rate prometheus {seen_rate:.2}/s vs measured {measured_rate:.2}/s"
    );
    assert!(
        (seen_rate - measured_rate).abs() <= 0.35 * measured_rate,
        "rate {seen_rate} vs measured {measured_rate}"
    );
    // Back to zero once the load stops.
    wait_for(&prom, &backlog, "backlog after load", |v| v == 0.0);
    wait_for(&prom, &depth, "queue depth after load", |v| v == 0.0);
}
