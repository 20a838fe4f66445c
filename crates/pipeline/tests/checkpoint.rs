//! Checkpoint and resume on ONNX Runtime (CPU) with the tiny models: a run
//! checkpointed (or suspended) at step k, written to bytes, read back and
//! resumed in a fresh request gives the uninterrupted run's pixels byte for
//! byte, for every scheduler, txt2img and img2img.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyaccel_executor_onnx::{DeviceRequest, OnnxConfig, OnnxExecutor};
use anyaccel_pipeline::{
    BatchOutput, Checkpoint, CheckpointError, Defaults, GeneratedImage, GenerationParams,
    GenerationRequest, Limits, Model, Observer, Outcome, Pipeline, Quiet,
};
use common::{diff, fixtures, load_png};

fn pipeline(model: &str) -> Pipeline {
    let dir = fixtures().join("models").join(model);
    let m = Model::load_dir(model, &dir).expect("tiny model loads");
    let config = OnnxConfig {
        device: DeviceRequest::Cpu,
        ..OnnxConfig::default()
    };
    let exec = OnnxExecutor::load(&dir, &m.components(), &config).expect("onnx executor loads");
    let defaults = Defaults::for_model(&m.info);
    Pipeline::new(Arc::new(exec), m, Limits::default(), defaults)
}

/// Two images (seeds 7 and 8) with classifier-free guidance where the family has it.
fn params(p: &Pipeline, scheduler: &str, steps: u32) -> GenerationParams {
    let cfg = p.guidance() == anyaccel_pipeline::Guidance::Classifier;
    GenerationParams {
        prompt: "a red bicycle leaning on a brick wall".into(),
        negative_prompt: cfg.then(|| "blurry".into()),
        width: Some(64),
        height: Some(64),
        steps: Some(steps),
        guidance_scale: cfg.then_some(6.0),
        scheduler: Some(scheduler.into()),
        seed: Some(7),
        n: Some(2),
        ..GenerationParams::default()
    }
}

fn img2img(p: &Pipeline, scheduler: &str, steps: u32, strength: f32) -> GenerationParams {
    GenerationParams {
        init_image: Some(load_png(&fixtures().join("reference/init_64.png"))),
        strength: Some(strength),
        ..params(p, scheduler, steps)
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Event {
    Step(usize, usize, usize),
    Checkpoint(usize, usize),
}

/// Checkpoints, suspends or cancels at given steps, and logs what it is told.
#[derive(Default)]
struct Watch {
    /// Checkpoint after this step (any request).
    checkpoint_at: Option<usize>,
    /// Per request: suspend once this step is done (0: before the first).
    suspend_after: HashMap<usize, usize>,
    /// Per request: cancel once this step is done.
    cancel_after: HashMap<usize, usize>,
    events: Mutex<Vec<Event>>,
    checkpoints: Mutex<Vec<(usize, usize, Checkpoint)>>,
    /// Per request: the last step reported.
    last: Mutex<HashMap<usize, usize>>,
}

impl Watch {
    fn checkpoint_at(k: usize) -> Self {
        Self {
            checkpoint_at: Some(k),
            ..Self::default()
        }
    }

    fn suspend_after(k: usize) -> Self {
        Self {
            suspend_after: HashMap::from([(0, k)]),
            ..Self::default()
        }
    }

    fn done(&self, r: usize) -> usize {
        self.last.lock().unwrap().get(&r).copied().unwrap_or(0)
    }

    fn steps_of(&self, r: usize) -> Vec<(usize, usize)> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match *e {
                Event::Step(q, s, t) if q == r => Some((s, t)),
                _ => None,
            })
            .collect()
    }

    fn take_checkpoint(&self) -> Checkpoint {
        let mut cs = self.checkpoints.lock().unwrap();
        assert_eq!(cs.len(), 1, "one checkpoint expected");
        cs.remove(0).2
    }
}

impl Observer for Watch {
    fn on_step(&self, request: usize, step: usize, total: usize) {
        self.events
            .lock()
            .unwrap()
            .push(Event::Step(request, step, total));
        self.last.lock().unwrap().insert(request, step);
    }
    fn is_cancelled(&self, request: usize) -> bool {
        self.cancel_after
            .get(&request)
            .is_some_and(|&k| self.done(request) >= k)
    }
    fn wants_checkpoint(&self, _request: usize, step: usize, _total: usize) -> bool {
        self.checkpoint_at == Some(step)
    }
    fn on_checkpoint(&self, request: usize, checkpoint: Checkpoint) {
        let step = checkpoint.steps_done() as usize;
        self.events
            .lock()
            .unwrap()
            .push(Event::Checkpoint(request, step));
        self.checkpoints
            .lock()
            .unwrap()
            .push((request, step, checkpoint));
    }
    fn should_suspend(&self, request: usize) -> bool {
        self.suspend_after
            .get(&request)
            .is_some_and(|&k| self.done(request) >= k)
    }
}

fn run(p: &Pipeline, requests: &[&GenerationRequest], observer: &dyn Observer) -> BatchOutput {
    p.run_batch(requests, observer).expect("batch runs")
}

fn completed(outcome: Outcome) -> Vec<GeneratedImage> {
    match outcome {
        Outcome::Completed(images) => images,
        other => panic!("expected a completed request, got {other:?}"),
    }
}

fn suspended(outcome: Outcome) -> Checkpoint {
    match outcome {
        Outcome::Suspended(c) => c,
        other => panic!("expected a suspended request, got {other:?}"),
    }
}

fn first(out: BatchOutput) -> Outcome {
    out.outcomes.into_iter().next().expect("one outcome")
}

/// The same seeds and byte-identical pixels.
fn assert_same(got: &[GeneratedImage], want: &[GeneratedImage], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: image count");
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g.seed, w.seed, "{what}: seeds");
        if g.image.as_raw() != w.image.as_raw() {
            let (max, mean) = diff(&g.image, &w.image);
            panic!(
                "{what}, seed {}: pixels differ (max {max}, mean {mean:.4})",
                g.seed
            );
        }
    }
}

/// Through bytes and back, as a checkpoint travels between replicas.
fn travel(c: &Checkpoint) -> Checkpoint {
    let back = Checkpoint::from_bytes(&c.to_bytes()).expect("checkpoint reads back");
    assert_eq!(&back, c);
    back
}

#[test]
fn every_scheduler_resumes_byte_identical_from_a_checkpoint() {
    let steps = 6;
    let cases = [
        ("tiny-sd15", "euler"),
        ("tiny-sd15", "euler_a"),
        ("tiny-sd15", "ddim"),
        ("tiny-sd15", "dpmpp_2m"),
        ("tiny-sd15", "dpmpp_2m_karras"),
        ("tiny-sd15", "lcm"),
        ("tiny-sd3", "flow_match_euler"),
        ("tiny-flux", "flow_match_euler"),
    ];
    let mut pipelines: HashMap<&str, Pipeline> = HashMap::new();
    for (model, scheduler) in cases {
        let p = pipelines.entry(model).or_insert_with(|| pipeline(model));
        let request = p.validate(params(p, scheduler, steps)).unwrap();
        let full = completed(first(run(p, &[&request], &Quiet)));
        for k in [1usize, 4] {
            let what = format!("{model} {scheduler} checkpoint at {k}");
            let watch = Watch::checkpoint_at(k);
            let out = run(p, &[&request], &watch);
            // Taking a checkpoint disturbs nothing.
            assert_same(
                &completed(first(out)),
                &full,
                &format!("{what}, the run itself"),
            );
            {
                let events = watch.events.lock().unwrap();
                let at = events
                    .iter()
                    .position(|e| *e == Event::Checkpoint(0, k))
                    .unwrap_or_else(|| panic!("{what}: no checkpoint in {events:?}"));
                // After the scheduler step and before on_step for that step.
                assert_eq!(events[at + 1], Event::Step(0, k, steps as usize), "{what}");
                assert_eq!(at, k - 1, "{what}: {events:?}");
            }
            let c = watch.take_checkpoint();
            assert_eq!(c.steps_done(), k as u32, "{what}");
            assert_eq!(c.images(), 2, "{what}");
            let c = travel(&c);

            let fresh = p.validate(params(p, scheduler, steps)).unwrap();
            let resumed = fresh.clone().resume_from(c).expect("checkpoint fits");
            assert_eq!(resumed.denoise_steps(), steps);
            assert_eq!(resumed.remaining_steps(), steps - k as u32);
            assert_eq!(
                resumed.work() * steps as u64,
                fresh.work() * (steps as u64 - k as u64),
                "{what}: work counts the steps left"
            );
            assert_ne!(resumed.batch_key(), fresh.batch_key());
            assert!(resumed.to_string().contains("resumed after step"));

            let watch = Watch::default();
            let out = run(p, &[&resumed], &watch);
            assert_eq!(out.timings.steps, steps as usize - k, "{what}: steps run");
            assert_same(&completed(first(out)), &full, &what);
            let reported: Vec<(usize, usize)> = (k + 1..=steps as usize)
                .map(|s| (s, steps as usize))
                .collect();
            assert_eq!(watch.steps_of(0), reported, "{what}: steps reported");
        }
    }
}

#[test]
fn a_suspended_request_resumes_byte_identical() {
    let p = pipeline("tiny-sd15");
    let steps = 8;
    for scheduler in ["euler_a", "dpmpp_2m"] {
        let request = p.validate(params(&p, scheduler, steps)).unwrap();
        let full = completed(first(run(&p, &[&request], &Quiet)));

        let watch = Watch::suspend_after(3);
        let out = run(&p, &[&request], &watch);
        assert_eq!(out.timings.steps, 3, "{scheduler}");
        let c = suspended(first(out));
        assert_eq!(c.steps_done(), 3, "{scheduler}");
        assert_eq!(watch.steps_of(0), vec![(1, 8), (2, 8), (3, 8)]);

        // Suspended again, after step 5, on the resumed run: checkpoints chain.
        let resumed = request.clone().resume_from(travel(&c)).unwrap();
        let watch = Watch::suspend_after(5);
        let out = run(&p, &[&resumed], &watch);
        assert_eq!(out.timings.steps, 2, "{scheduler}");
        let c = suspended(first(out));
        assert_eq!(c.steps_done(), 5);
        assert_eq!(watch.steps_of(0), vec![(4, 8), (5, 8)]);

        let resumed = request.clone().resume_from(travel(&c)).unwrap();
        let out = run(&p, &[&resumed], &Quiet);
        assert_eq!(out.timings.steps, 3, "{scheduler}");
        assert_same(&completed(first(out)), &full, scheduler);
    }
}

#[test]
fn a_suspend_before_the_first_step_hands_back_the_start() {
    let p = pipeline("tiny-sd15");
    let request = p.validate(params(&p, "euler_a", 4)).unwrap();
    let full = completed(first(run(&p, &[&request], &Quiet)));
    let out = run(&p, &[&request], &Watch::suspend_after(0));
    assert_eq!(out.timings.steps, 0);
    let c = suspended(first(out));
    assert_eq!(c.steps_done(), 0);
    let resumed = request.clone().resume_from(travel(&c)).unwrap();
    // It starts where a fresh request does, so it may share a fresh one's batch.
    assert_eq!(resumed.batch_key(), request.batch_key());
    let out = run(&p, &[&resumed, &request], &Quiet);
    assert_eq!(out.timings.steps, 4);
    let mut outcomes = out.outcomes.into_iter();
    let a = completed(outcomes.next().unwrap());
    let b = completed(outcomes.next().unwrap());
    assert_same(&a, &b, "resumed from the start vs fresh, one batch");
    // In a batch of two requests, not one: near, if not bit-exact, to the solo run.
    let (max, _) = diff(&a[0].image, &full[0].image);
    assert!(max <= 1, "max {max}");
}

#[test]
fn cancel_wins_over_suspend() {
    let p = pipeline("tiny-sd15");
    let request = p.validate(params(&p, "euler", 4)).unwrap();
    let watch = Watch {
        suspend_after: HashMap::from([(0, 2)]),
        cancel_after: HashMap::from([(0, 2)]),
        ..Watch::default()
    };
    let out = run(&p, &[&request], &watch);
    assert!(matches!(first(out), Outcome::Cancelled));
}

#[test]
fn img2img_resumes_byte_identical() {
    let p = pipeline("tiny-sd15");
    let (steps, strength) = (10, 0.6);
    for scheduler in ["euler_a", "ddim", "dpmpp_2m"] {
        let request = p.validate(img2img(&p, scheduler, steps, strength)).unwrap();
        let total = request.denoise_steps() as usize;
        assert_eq!(total, 6);
        let full = completed(first(run(&p, &[&request], &Quiet)));

        let watch = Watch::checkpoint_at(2);
        assert_same(
            &completed(first(run(&p, &[&request], &watch))),
            &full,
            scheduler,
        );
        let c = travel(&watch.take_checkpoint());
        assert_eq!(c.steps_done(), 2);
        let resumed = request.clone().resume_from(c).unwrap();
        // The schedule index: img2img's first step (4 of 10) plus the steps done.
        assert_eq!(resumed.batch_key().resume_index, Some(6));
        let watch = Watch::default();
        let out = run(&p, &[&resumed], &watch);
        assert_eq!(out.timings.steps, total - 2);
        // No VAE encode for a resumed request: its latents are in the checkpoint.
        assert_same(&completed(first(out)), &full, scheduler);
        assert_eq!(watch.steps_of(0), vec![(3, 6), (4, 6), (5, 6), (6, 6)]);

        // Suspended before the first step: after the VAE encode, before any UNet call.
        let out = run(&p, &[&request], &Watch::suspend_after(0));
        let c = travel(&suspended(first(out)));
        let resumed = request.clone().resume_from(c).unwrap();
        let out = run(&p, &[&resumed], &Quiet);
        assert_eq!(out.timings.steps, total);
        assert_same(
            &completed(first(out)),
            &full,
            &format!("{scheduler}, from 0"),
        );
    }
}

/// A suspended request leaves its batch as a cancelled one does: the others
/// run on exactly as they would have.
#[test]
fn in_a_batch_only_the_suspended_request_leaves() {
    let p = pipeline("tiny-sd15");
    let steps = 6;
    let a = p.validate(params(&p, "dpmpp_2m", steps)).unwrap();
    let b = p
        .validate(GenerationParams {
            seed: Some(100),
            n: Some(1),
            ..params(&p, "dpmpp_2m", steps)
        })
        .unwrap();
    let cancelled = Watch {
        cancel_after: HashMap::from([(0, 2)]),
        ..Watch::default()
    };
    let out = run(&p, &[&a, &b], &cancelled);
    let mut outcomes = out.outcomes.into_iter();
    assert!(matches!(outcomes.next(), Some(Outcome::Cancelled)));
    let b_reference = completed(outcomes.next().unwrap());

    let watch = Watch::suspend_after(2);
    let out = run(&p, &[&a, &b], &watch);
    assert_eq!(out.timings.steps, steps as usize);
    let mut outcomes = out.outcomes.into_iter();
    let c = suspended(outcomes.next().unwrap());
    assert_eq!(c.steps_done(), 2);
    assert_eq!(c.images(), 2);
    assert_same(&completed(outcomes.next().unwrap()), &b_reference, "b");
    assert_eq!(watch.steps_of(0).len(), 2);
    assert_eq!(watch.steps_of(1).len(), steps as usize);

    // The suspended request, resumed alone, matches the run in which the
    // other request left at the same step.
    let b_gone = Watch {
        cancel_after: HashMap::from([(1, 2)]),
        ..Watch::default()
    };
    let a_reference = completed(first(run(&p, &[&a, &b], &b_gone)));
    let resumed = a.clone().resume_from(travel(&c)).unwrap();
    let resumed = completed(first(run(&p, &[&resumed], &Quiet)));
    for (r, w) in resumed.iter().zip(&a_reference) {
        let (max, mean) = diff(&r.image, &w.image);
        println!(
            "a, seed {}: resumed alone vs left in the batch: max {max}, mean {mean:.4}",
            r.seed
        );
        // Text encoded at another batch size may differ in the last bits.
        assert!(max <= 1, "max {max}");
    }
}

/// Resumed requests at different steps do not share a batch; at the same step they do.
#[test]
fn batches_hold_one_resume_point() {
    let p = pipeline("tiny-sd15");
    let request = p.validate(params(&p, "euler", 6)).unwrap();
    let at = |k: usize| {
        let watch = Watch::checkpoint_at(k);
        run(&p, &[&request], &watch);
        request
            .clone()
            .resume_from(watch.take_checkpoint())
            .unwrap()
    };
    let (two, three) = (at(2), at(3));
    assert_ne!(two.batch_key(), three.batch_key());
    assert_ne!(two.batch_key(), request.batch_key());
    assert!(matches!(
        p.run_batch(&[&two, &three], &Quiet),
        Err(anyaccel_pipeline::PipelineError::IncompatibleBatch)
    ));
    let again = at(2);
    assert_eq!(two.batch_key(), again.batch_key());
    let out = run(&p, &[&two, &again], &Quiet);
    assert_eq!(out.timings.steps, 4);
}

#[test]
fn resume_from_refuses_another_run() {
    let p = pipeline("tiny-sd15");
    let request = p.validate(params(&p, "euler", 6)).unwrap();
    let watch = Watch::checkpoint_at(4);
    run(&p, &[&request], &watch);
    let c = watch.take_checkpoint();
    let refused = |other: GenerationParams| {
        let r = p.validate(other).unwrap();
        let e = r.resume_from(c.clone()).unwrap_err();
        assert_eq!(e.field, "checkpoint", "{e}");
        e.message
    };
    let base = || params(&p, "euler", 6);
    let m = refused(GenerationParams {
        seed: Some(8),
        ..base()
    });
    assert!(m.contains("seeds"), "{m}");
    let m = refused(GenerationParams {
        n: Some(1),
        ..base()
    });
    assert!(m.contains("2 images"), "{m}");
    refused(GenerationParams {
        n: Some(3),
        ..base()
    });
    refused(GenerationParams {
        steps: Some(8),
        ..base()
    });
    refused(GenerationParams {
        scheduler: Some("ddim".into()),
        ..base()
    });
    refused(GenerationParams {
        width: Some(128),
        ..base()
    });
    // Steps done at or past the request's denoising steps (img2img at 0.5 runs 3).
    let m = refused(img2img(&p, "euler", 6, 0.5));
    assert!(m.contains("4 steps done"), "{m}");
    // Another strength: the same step count but another first step.
    let watch = Watch::checkpoint_at(1);
    let r = p.validate(img2img(&p, "euler", 10, 0.6)).unwrap();
    run(&p, &[&r], &watch);
    let c = watch.take_checkpoint();
    let other = p.validate(img2img(&p, "euler", 10, 0.8)).unwrap();
    let e = other.resume_from(c.clone()).unwrap_err();
    assert_eq!(e.field, "checkpoint");
    // The fresh request refuses nothing and resumes.
    assert!(r.resume_from(c).unwrap().resume().is_some());
    assert!(request.resume().is_none());
}

#[test]
fn damaged_checkpoints_are_refused() {
    let p = pipeline("tiny-sd15");
    let request = p.validate(params(&p, "dpmpp_2m", 6)).unwrap();
    let watch = Watch::checkpoint_at(3);
    run(&p, &[&request], &watch);
    let bytes = watch.take_checkpoint().to_bytes();
    for len in (0..bytes.len()).step_by(97).chain([bytes.len() - 1]) {
        assert!(
            matches!(
                Checkpoint::from_bytes(&bytes[..len]),
                Err(CheckpointError::Truncated { .. })
            ),
            "truncated to {len}"
        );
    }
    for at in (0..bytes.len()).step_by(61) {
        let mut bad = bytes.clone();
        bad[at] = bad[at].wrapping_add(1);
        assert!(Checkpoint::from_bytes(&bad).is_err(), "byte {at} changed");
    }
    let mut long = bytes.clone();
    long.extend_from_slice(b"extra");
    assert!(Checkpoint::from_bytes(&long).is_err());
    assert_eq!(
        Checkpoint::from_bytes(b"{\"steps_done\": 3}"),
        Err(CheckpointError::NotACheckpoint)
    );
    let mut future = bytes.clone();
    future[8] = 9;
    assert!(matches!(
        Checkpoint::from_bytes(&future),
        Err(CheckpointError::UnsupportedVersion { found: 9, .. })
    ));
    // The undamaged bytes still resume.
    let c = Checkpoint::from_bytes(&bytes).unwrap();
    assert!(request.resume_from(c).is_ok());
}
