//! Running `anyaccel serve` as a child process for tests.
#![allow(dead_code)]

pub mod redis;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub struct Server {
    pub child: Child,
    pub base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn serve(extra: &[&str]) -> Server {
    serve_with(extra, &[], Stdio::null())
}

pub fn serve_with(extra: &[&str], env: &[(&str, &str)], stdout: Stdio) -> Server {
    serve_model("fixtures/models/tiny-sd15", extra, env, stdout)
}

/// `anyaccel serve` of the fixture model at `model` (relative to the repo).
pub fn serve_model(model: &str, extra: &[&str], env: &[(&str, &str)], stdout: Stdio) -> Server {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_anyaccel"))
        .args([
            "serve",
            "--model",
            model,
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ])
        .args([
            "--sizes",
            "64x64,128x128",
            "--device",
            "cpu",
            "--threads",
            "1",
        ])
        .args(extra)
        .current_dir(repo())
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(stdout)
        .spawn()
        .expect("server starts");
    let mut server = Server {
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    let started = Instant::now();
    loop {
        // A server that failed to load has said why on stderr; don't wait out the minute.
        if let Ok(Some(status)) = server.child.try_wait() {
            panic!("server exited before it was ready: {status}");
        }
        if ureq::get(&format!("{}/health/ready", server.base))
            .call()
            .is_ok_and(|r| r.status() == 200)
        {
            return server;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "server never became ready"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn venv_python() -> PathBuf {
    let py = repo().join(".venv/bin/python");
    assert!(
        py.exists(),
        "{} missing: run scripts/setup-test-env.sh (the README's test command does)",
        py.display()
    );
    py
}

/// The sum of a Prometheus series' samples (all label sets) on `base`'s `/metrics`.
pub fn metric(base: &str, name: &str) -> f64 {
    let text = ureq::get(&format!("{base}/metrics"))
        .call()
        .expect("metrics")
        .into_string()
        .expect("text");
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
