//! Flow matching (diffusers' `FlowMatchEulerDiscreteScheduler`), the
//! scheduler of SD3 and Flux: the denoiser predicts a velocity and each step
//! moves the latents along it from one noise level (sigma) to the next.

use super::ScheduleError;
use super::config::{FlowConfig, linspace64};

/// How a pipeline spreads its noise levels before the shift.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowSigmas {
    /// SD3's `set_timesteps(n)`: evenly spaced between the scheduler's own
    /// (shifted) extremes.
    Uniform,
    /// Flux's `sigmas = linspace(1, 1/n, n)`.
    Linear,
}

/// The dynamic shift `mu` for an image of `tokens` latent tokens: linear in
/// the token count between (`base_image_seq_len`, `base_shift`) and
/// (`max_image_seq_len`, `max_shift`), as diffusers' `calculate_shift`.
pub fn dynamic_shift(config: &FlowConfig, tokens: usize) -> f64 {
    let (x0, x1) = (
        config.base_image_seq_len as f64,
        config.max_image_seq_len as f64,
    );
    let m = (config.max_shift - config.base_shift) / (x1 - x0);
    let b = config.base_shift - m * x0;
    tokens as f64 * m + b
}

/// Noise levels for `steps` steps, plus the final 0. `image_tokens` sets
/// the shift when the config shifts dynamically (Flux).
pub(crate) fn sigmas(
    config: &FlowConfig,
    train_steps: usize,
    steps: usize,
    spread: FlowSigmas,
    image_tokens: usize,
) -> Result<Vec<f32>, ScheduleError> {
    let refuse = |what: &str| {
        Err(ScheduleError(format!(
            "FlowMatchEulerDiscreteScheduler with {what} is not supported"
        )))
    };
    if config.stochastic_sampling == Some(true) {
        return refuse("stochastic_sampling");
    }
    if config.invert_sigmas == Some(true) {
        return refuse("invert_sigmas");
    }
    if config.use_exponential_sigmas == Some(true) || config.use_beta_sigmas == Some(true) {
        return refuse("exponential or beta sigmas");
    }
    let mu = dynamic_shift(config, image_tokens);
    let linear_time_shift = match config.time_shift_type.as_deref() {
        None | Some("exponential") => false,
        Some("linear") => true,
        Some(other) => return refuse(&format!("time_shift_type `{other}`")),
    };
    let shift = |s: f64| -> f64 {
        if config.use_dynamic_shifting {
            let k = 1.0 / s - 1.0;
            if linear_time_shift {
                mu / (mu + k)
            } else {
                mu.exp() / (mu.exp() + k)
            }
        } else {
            config.shift * s / (1.0 + (config.shift - 1.0) * s)
        }
    };
    let n = train_steps as f64;
    let raw: Vec<f64> = match spread {
        FlowSigmas::Linear => linspace64(1.0, 1.0 / steps as f64, steps)
            .into_iter()
            // diffusers takes the pipeline's sigmas as float32.
            .map(|s| s as f32 as f64)
            .collect(),
        FlowSigmas::Uniform => {
            // The scheduler's extremes, computed at construction in float32
            // (already shifted unless the shift is dynamic).
            let train = |t: f32| -> f64 {
                let s = t / train_steps as f32;
                if config.use_dynamic_shifting {
                    s as f64
                } else {
                    let k = config.shift as f32;
                    (k * s / (1.0 + (k - 1.0) * s)) as f64
                }
            };
            let (max, min) = (train(train_steps as f32), train(1.0));
            linspace64(max * n, min * n, steps)
                .into_iter()
                .map(|t| t / n)
                .collect()
        }
    };
    let mut out: Vec<f64> = raw.into_iter().map(shift).collect();
    if let Some(terminal) = config.shift_terminal {
        let last = 1.0 - out[out.len() - 1];
        let scale = last / (1.0 - terminal);
        for s in &mut out {
            *s = 1.0 - (1.0 - *s) / scale;
        }
    }
    let mut out: Vec<f32> = out.into_iter().map(|s| s as f32).collect();
    out.push(0.0);
    Ok(out)
}
