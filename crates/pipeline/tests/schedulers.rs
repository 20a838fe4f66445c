//! Every scheduler's timesteps, sigmas and initial noise scale against
//! diffusers, for both tiny models' configs, several step counts and every
//! timestep spacing.

mod common;

use anyaccel_pipeline::scheduler::{Schedule, SchedulerConfig, SchedulerKind};
use common::{fixtures, floats, read_json};

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * (1.0 + b.abs())
}

#[test]
fn schedules_match_diffusers() {
    let r = read_json("reference/schedulers.json");
    let mut checked = 0;
    let mut failures = Vec::new();
    for (model, m) in r["models"].as_object().unwrap() {
        let path = fixtures().join(format!("models/{model}/scheduler/scheduler_config.json"));
        let base: SchedulerConfig =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        for (name, s) in m["schedulers"].as_object().unwrap() {
            let kind: SchedulerKind = name.parse().unwrap();
            for (spacing, by_steps) in s["by_spacing"].as_object().unwrap() {
                let mut cfg = base.clone();
                if spacing != "default" {
                    cfg.timestep_spacing = Some(spacing.clone());
                }
                for (steps, expected) in by_steps.as_object().unwrap() {
                    let Some(ts) = expected.get("timesteps") else {
                        continue;
                    };
                    let what = format!("{model} {name} {spacing} {steps} steps");
                    let sched = match Schedule::new(kind, &cfg, steps.parse().unwrap()) {
                        Ok(s) => s,
                        Err(e) => {
                            failures.push(format!("{what}: {e}"));
                            continue;
                        }
                    };
                    let ts = floats(ts);
                    let ours: Vec<f64> = sched.timesteps().iter().map(|&t| t as f64).collect();
                    if ours.len() != ts.len()
                        || ours.iter().zip(&ts).any(|(a, b)| !close(*a, *b, 1e-5))
                    {
                        failures.push(format!("{what}: timesteps {ours:?} vs {ts:?}"));
                    }
                    if let Some(sig) = expected.get("sigmas") {
                        let sig = floats(sig);
                        let ours: Vec<f64> = sched.sigmas().iter().map(|&t| t as f64).collect();
                        if ours.len() != sig.len()
                            || ours.iter().zip(&sig).any(|(a, b)| !close(*a, *b, 1e-4))
                        {
                            failures.push(format!("{what}: sigmas {ours:?} vs {sig:?}"));
                        }
                    }
                    let ins = expected["init_noise_sigma"].as_f64().unwrap();
                    if !close(sched.init_noise_sigma() as f64, ins, 1e-4) {
                        failures.push(format!(
                            "{what}: init_noise_sigma {} vs {ins}",
                            sched.init_noise_sigma()
                        ));
                    }
                    checked += 1;
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} schedules differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(checked > 200, "only {checked} schedules checked");
}
