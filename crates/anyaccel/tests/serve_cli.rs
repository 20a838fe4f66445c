//! `anyaccel serve` as a process: real clients, and SIGTERM while working.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn serve(extra: &[&str]) -> Server {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_anyaccel"))
        .args(["serve", "--model", "fixtures/models/tiny-sd15", "--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--sizes", "64x64,128x128", "--device", "cpu", "--threads", "1"])
        .args(extra)
        .current_dir(repo())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("server starts");
    let server = Server {
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    let started = Instant::now();
    loop {
        if let Ok(r) = ureq::get(&format!("{}/health/ready", server.base)).call() {
            if r.status() == 200 {
                return server;
            }
        }
        assert!(started.elapsed() < Duration::from_secs(60), "server never became ready");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn venv_python() -> PathBuf {
    let py = repo().join(".venv/bin/python");
    assert!(py.exists(), "{} missing: run scripts/setup-test-env.sh (the README's test command does)", py.display());
    py
}

#[test]
fn official_openai_sdk_generates_and_edits() {
    let s = serve(&["--api-key", "test-key"]);
    let out = Command::new(venv_python())
        .arg(repo().join("crates/anyaccel/tests/python/openai_sdk.py"))
        .args([s.base.as_str(), "test-key"])
        .arg(repo().join("fixtures/reference/init_64.png"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openai SDK test failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn sigterm_finishes_running_work_refuses_new_work_and_exits_zero() {
    let mut s = serve(&["--drain-timeout-secs", "60"]);
    let url = format!("{}/v1/images/generations", s.base);
    let slow = std::thread::spawn(move || {
        ureq::post(&url)
            .send_json(json!({"prompt": "slow", "steps": 150, "n": 8, "size": "128x128", "seed": 3}))
            .map(|r| (r.status(), r.into_json::<Value>().ok()))
            .map_err(|e| e.to_string())
    });
    // Wait until it is running.
    let started = Instant::now();
    loop {
        let p: Value = ureq::get(&format!("{}/sdapi/v1/progress", s.base)).call().unwrap().into_json().unwrap();
        if p["state"]["sampling_step"].as_u64() > Some(0) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "generation never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    let pid = s.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());

    // Readiness drops at once and new work is refused with 503 + Retry-After.
    let t = Instant::now();
    loop {
        match ureq::get(&format!("{}/health/ready", s.base)).call() {
            Err(ureq::Error::Status(503, _)) => break,
            _ => assert!(t.elapsed() < Duration::from_secs(5), "readiness did not drop"),
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    match ureq::post(&format!("{}/v1/images/generations", s.base)).send_json(json!({"prompt": "late", "steps": 1})) {
        Err(ureq::Error::Status(503, r)) => {
            assert!(r.header("retry-after").is_some());
            let body: Value = r.into_json().unwrap();
            assert_eq!(body["error"]["code"], "draining");
        }
        other => panic!("expected 503 while draining, got {:?}", other.map(|r| r.status())),
    }

    // The running generation completes, then the process exits 0.
    let (status, body) = slow.join().unwrap().expect("in-flight request completes");
    assert_eq!(status, 200);
    assert_eq!(body.unwrap()["data"].as_array().unwrap().len(), 8);
    let t = Instant::now();
    let code = loop {
        if let Some(st) = s.child.try_wait().unwrap() {
            break st;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "did not exit after draining");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(code.success(), "exit status {code}");
}
