//! The executor boundary against a real sidecar (CPU torch, tiny SD 1.5):
//! text encoding by encoder and layer, denoise sessions with per-row
//! timesteps, row selection, static-batch chunking, and sessions the sidecar
//! lost (evicted, or a restart between steps) being begun again.

mod common;

use std::time::{Duration, Instant};

use anyaccel_executor::{
    Component, Conditioning, Executor, ExecutorError, HiddenLayer, Tensor, TimestepInput, TokenIds,
};
use common::*;

/// Deterministic values in [-1, 1) (no RNG crate needed).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn tensor(shape: Vec<usize>, seed: u64) -> Tensor {
    let n = shape.iter().product();
    Tensor::new(shape, values(n, seed)).expect("shape fits")
}

fn ids(batch: usize) -> TokenIds {
    // BOS, a few prompt tokens that differ per row, then EOS padding (CLIP's
    // layout, in the tiny fixture's 1000-token vocabulary).
    let mut ids = Vec::new();
    for row in 0..batch {
        let mut r = vec![998, 320 + row as i64, 125, 539];
        r.resize(77, 999);
        ids.extend(r);
    }
    TokenIds {
        batch,
        len: 77,
        ids,
    }
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn step_once(e: &dyn Executor, cond: Conditioning, sample: &Tensor, ts: &[f32]) -> Tensor {
    let mut s = e.denoise(cond).expect("session begins");
    s.step(sample, ts).expect("step runs")
}

#[test]
fn sessions_follow_rows_timesteps_and_selection() {
    let remote = spawn(remote_config());
    assert_eq!(
        remote.components(),
        &[
            Component::TextEncoder,
            Component::Unet,
            Component::VaeDecoder,
            Component::VaeEncoder
        ]
    );
    assert_eq!(remote.pipeline_class(), "StableDiffusionPipeline");
    assert_eq!(remote.capabilities().timestep, TimestepInput::PerSample);

    let enc = remote
        .encode_text(Component::TextEncoder, &ids(3), HiddenLayer::Last)
        .expect("text encodes");
    assert_eq!(enc.hidden.shape(), &[3, 77, 32]);
    assert_eq!(enc.pooled.as_ref().map(Tensor::shape), Some(&[3, 32][..]));
    let pen = remote
        .encode_text(Component::TextEncoder, &ids(3), HiddenLayer::Penultimate)
        .expect("penultimate layer");
    assert!(max_diff(pen.hidden.data(), enc.hidden.data()) > 1e-3);
    assert!(matches!(
        remote.encode_text(Component::TextEncoder2, &ids(1), HiddenLayer::Last),
        Err(ExecutorError::Missing { .. })
    ));
    assert!(matches!(
        remote.encode_text(Component::Unet, &ids(1), HiddenLayer::Last),
        Err(ExecutorError::Invalid { .. })
    ));

    // Rows at different timesteps in one call give what each gives alone.
    let sample = tensor(vec![3, 4, 8, 8], 1);
    let ts = [999.0, 500.0, 1.0];
    let mut session = remote
        .denoise(Conditioning::text(enc.hidden.clone()))
        .expect("session begins");
    let together = session.step(&sample, &ts).expect("step");
    for i in 0..3 {
        let alone = step_once(
            remote.as_ref(),
            Conditioning::text(enc.hidden.gather(&[i]).unwrap()),
            &sample.gather(&[i]).unwrap(),
            &ts[i..=i],
        );
        let d = max_diff(together.item(i), alone.data());
        assert!(d < 1e-5, "row {i}: batched vs alone differ by {d}");
    }
    // The same session answers the same step again (the conditioning stayed).
    let again = session.step(&sample, &ts).expect("second step");
    assert!(max_diff(again.data(), together.data()) < 1e-6);

    // Cancelled rows leave the session; the rest keep their conditioning.
    session.select(&[2, 0]).expect("select");
    assert_eq!(session.rows(), 2);
    let kept = session
        .step(&sample.gather(&[2, 0]).unwrap(), &[1.0, 999.0])
        .expect("step after select");
    assert!(max_diff(kept.item(0), together.item(2)) < 1e-5);
    assert!(max_diff(kept.item(1), together.item(0)) < 1e-5);
    assert!(matches!(
        session.step(&sample, &ts),
        Err(ExecutorError::Invalid { .. })
    ));
    assert!(matches!(
        session.select(&[5]),
        Err(ExecutorError::Invalid { .. })
    ));
}

/// A sidecar emulating a Neuron model compiled for 2 images (UNet batch 4, text
/// batch 2) only accepts those batches: sessions of 5 rows are two sidecar
/// sessions (4 + 1 padded to 4), and give the dynamic sidecar's outputs.
#[test]
fn static_sessions_are_split_and_padded() {
    let mut cfg = remote_config();
    cfg.extra_args = ["--static-batch", "2", "--static-size", "64x64"]
        .map(String::from)
        .to_vec();
    let fixed = spawn(cfg);
    let dynamic = spawn(remote_config());

    let a = fixed
        .encode_text(Component::TextEncoder, &ids(3), HiddenLayer::Last)
        .expect("3 prompts in batches of 2");
    let b = dynamic
        .encode_text(Component::TextEncoder, &ids(3), HiddenLayer::Last)
        .expect("dynamic");
    assert!(max_diff(a.hidden.data(), b.hidden.data()) < 1e-5);

    let hidden = tensor(vec![5, 77, 32], 2);
    let sample = tensor(vec![5, 4, 8, 8], 3);
    let ts = [900.0, 800.0, 700.0, 600.0, 500.0];
    let mut s = fixed
        .denoise(Conditioning::text(hidden.clone()))
        .expect("5 rows in UNet batches of 4");
    let got = s.step(&sample, &ts).expect("static step");
    let want = step_once(
        dynamic.as_ref(),
        Conditioning::text(hidden.clone()),
        &sample,
        &ts,
    );
    assert_eq!(got.shape(), sample.shape());
    let d = max_diff(got.data(), want.data());
    assert!(d < 1e-5, "static vs dynamic: {d}");

    s.select(&[4, 1, 0]).expect("select to one chunk");
    let got = s
        .step(&sample.gather(&[4, 1, 0]).unwrap(), &[500.0, 800.0, 900.0])
        .expect("step after select");
    for (i, row) in [4, 1, 0].into_iter().enumerate() {
        assert!(max_diff(got.item(i), want.item(row)) < 1e-5);
    }
}

fn kill(pid: u32) {
    let ok = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("kill runs")
        .success();
    assert!(ok, "kill -KILL {pid} failed");
}

/// A session outlives the sidecar's cache and the sidecar itself: its next
/// step sends the conditioning again and computes the same output.
#[test]
fn lost_sessions_are_begun_again() {
    let remote = spawn(remote_config());
    let hidden = tensor(vec![2, 77, 32], 4);
    let sample = tensor(vec![2, 4, 8, 8], 5);
    let ts = [700.0, 300.0];
    let mut first = remote
        .denoise(Conditioning::text(hidden.clone()))
        .expect("begins");
    let want = first.step(&sample, &ts).expect("step");

    // The sidecar keeps 16 sessions: 16 newer ones evict the first (NOT_FOUND).
    let newer: Vec<_> = (0..16)
        .map(|_| {
            remote
                .denoise(Conditioning::text(hidden.clone()))
                .expect("begins")
        })
        .collect();
    let got = first
        .step(&sample, &ts)
        .expect("an evicted session is begun again");
    assert!(max_diff(got.data(), want.data()) < 1e-6);
    drop(newer);

    // A restart between steps: the new process never knew the session.
    let pid = remote.status().pid.expect("pid");
    kill(pid);
    let deadline = Instant::now() + Duration::from_secs(120);
    while remote.status().pid == Some(pid) || !remote.is_ready() {
        assert!(
            Instant::now() < deadline,
            "no restart: {:?}",
            remote.status()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let got = first
        .step(&sample, &ts)
        .expect("begun again on the new sidecar");
    assert!(max_diff(got.data(), want.data()) < 1e-6);
    assert_eq!(remote.status().restarts, 1);
}
