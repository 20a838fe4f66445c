//! Supervision of a real sidecar process: a killed or hung sidecar fails the
//! request in flight with a clear `Unavailable` error (the server's 503),
//! readiness drops, the sidecar is restarted, and the next request succeeds.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyaccel_executor::ExecutorError;
use anyaccel_executor_remote::{RemoteError, RemoteExecutor};
use anyaccel_pipeline::{GenerationParams, Observer, Outcome, Pipeline, PipelineError};
use common::*;

/// Counts denoising steps, so the test kills the sidecar mid-request.
#[derive(Default)]
struct Steps(AtomicUsize);

impl Observer for Steps {
    fn on_step(&self, _request: usize, step: usize, _total: usize) {
        self.0.store(step, Ordering::SeqCst);
    }
}

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill runs")
        .success();
    assert!(ok, "kill {sig} {pid} failed");
}

/// A request long enough to be interrupted: 512x512 (64x64 latents), 60 steps.
fn long_request() -> GenerationParams {
    GenerationParams {
        width: Some(512),
        height: Some(512),
        steps: Some(60),
        ..params("a lighthouse at dusk", 1, 1, 60, "euler")
    }
}

/// Runs `request` on a thread; once it has done `after_steps` UNet steps, runs
/// `interrupt`; returns the request's error.
fn interrupted(
    p: &Pipeline,
    request: GenerationParams,
    after_steps: usize,
    interrupt: impl FnOnce(),
) -> PipelineError {
    let request = p.validate(request).expect("valid request");
    let steps = Steps::default();
    std::thread::scope(|s| {
        let run = s.spawn(|| p.run_batch(&[&request], &steps));
        let deadline = Instant::now() + Duration::from_secs(120);
        while steps.0.load(Ordering::SeqCst) < after_steps {
            assert!(
                !run.is_finished(),
                "the request ended before it could be interrupted"
            );
            assert!(Instant::now() < deadline, "the request made no progress");
            std::thread::sleep(Duration::from_millis(5));
        }
        interrupt();
        match run.join().expect("no panic") {
            Ok(out) => panic!(
                "the interrupted request succeeded: {:?}",
                out.outcomes
                    .iter()
                    .map(|o| matches!(o, Outcome::Completed(_)))
                    .collect::<Vec<_>>()
            ),
            Err(e) => e,
        }
    })
}

fn unavailable_message(err: PipelineError) -> String {
    match err {
        PipelineError::Executor(ExecutorError::Unavailable(m)) => m,
        other => panic!("expected ExecutorError::Unavailable, got {other:?}"),
    }
}

#[test]
fn a_killed_sidecar_fails_the_request_in_flight_then_is_restarted() {
    let remote = spawn(remote_config());
    let p = pipeline(remote.clone());
    let probe = p
        .validate(params("a red bicycle", 5, 1, 4, "euler"))
        .expect("valid");
    let before = p.generate(&probe).expect("first request");
    let first_pid = remote.status().pid.expect("a live sidecar has a pid");
    assert!(remote.is_ready());

    let t0 = Instant::now();
    let err = interrupted(&p, long_request(), 2, || signal(first_pid, "-KILL"));
    let failed_after = t0.elapsed();
    // Readiness is already down when the request's error arrives.
    assert!(
        !remote.is_ready(),
        "readiness must drop when the sidecar dies"
    );
    let message = unavailable_message(err);
    println!("request in flight: {message} (failed {failed_after:.2?} after it started)");
    assert!(message.contains("died while running unet"), "{message}");
    assert!(
        message.contains("SIGKILL"),
        "the message says how it died: {message}"
    );

    // While it restarts, requests fail fast with the reason rather than hang.
    let t1 = Instant::now();
    let down = unavailable_message(p.generate(&probe).expect_err("no sidecar, no image"));
    println!("while restarting ({:.2?}): {down}", t1.elapsed());
    assert!(
        t1.elapsed() < Duration::from_secs(1),
        "fail fast while down"
    );
    assert!(down.contains("not ready"), "{down}");

    assert!(
        remote.wait_ready(Duration::from_secs(120)),
        "the sidecar came back: {:?}",
        remote.status()
    );
    let status = remote.status();
    println!("restarted in {:.2?}: {status:?}", t1.elapsed());
    assert_eq!(status.restarts, 1);
    assert_ne!(status.pid, Some(first_pid));

    let after = p.generate(&probe).expect("the next request succeeds");
    let (max, _) = diff(&before[0].image, &after[0].image);
    assert_eq!(max, 0, "the restarted sidecar computes the same image");
}

#[test]
fn a_hung_sidecar_is_killed_by_the_health_checks_and_replaced() {
    let mut cfg = remote_config();
    // Tight enough to notice the hang in seconds, loose enough that a busy CI
    // machine does not fail the probes of a healthy sidecar.
    cfg.health_interval = Duration::from_millis(500);
    cfg.health_timeout = Duration::from_secs(1);
    cfg.health_failures = 2;
    let remote = spawn(cfg);
    let p = pipeline(remote.clone());
    let pid = remote.status().pid.expect("pid");

    // SIGSTOP: the process lives but answers nothing, so only the probes notice.
    let t0 = Instant::now();
    let err = interrupted(&p, long_request(), 1, || signal(pid, "-STOP"));
    let message = unavailable_message(err);
    println!(
        "hung sidecar detected after {:.2?}: {message}",
        t0.elapsed()
    );
    assert!(message.contains("unresponsive"), "{message}");
    assert!(!remote.is_ready());
    assert!(
        remote.wait_ready(Duration::from_secs(120)),
        "replaced: {:?}",
        remote.status()
    );
    p.generate(
        &p.validate(params("a red bicycle", 5, 1, 2, "euler"))
            .expect("valid"),
    )
    .expect("the replacement serves");
}

#[test]
fn a_sidecar_that_cannot_start_is_a_clear_error() {
    let mut cfg = remote_config();
    cfg.model = "/nonexistent/model".into();
    let err = RemoteExecutor::spawn(cfg)
        .err()
        .expect("a missing model cannot start");
    let text = err.to_string();
    println!("{text}");
    assert!(matches!(err, RemoteError::Exited { .. }), "{err:?}");
    assert!(
        text.contains("no such model folder") && text.contains("could not be loaded"),
        "{text}"
    );

    let mut cfg = remote_config();
    cfg.python = repo().join(".venv/bin/no-such-python");
    let err = RemoteExecutor::spawn(cfg)
        .err()
        .expect("no interpreter, no sidecar");
    assert!(matches!(err, RemoteError::Spawn { .. }), "{err:?}");
    assert!(err.to_string().contains("setup-sidecar-env.sh"), "{err}");
}
