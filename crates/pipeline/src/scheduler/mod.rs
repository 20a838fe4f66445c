//! Denoising schedulers, reimplemented from diffusers' definitions so that
//! timesteps, sigmas and updates agree with diffusers for the same config.
//!
//! A [`Schedule`] is computed once per batch (all of a batch's images share
//! the step count and scheduler); the per-image history that multistep
//! solvers need lives in an [`ItemState`], so images can leave a batch
//! (cancelled) without disturbing the others.

mod config;
mod flow;

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use config::linspace64;
pub use config::{FlowConfig, Prediction, SchedulerConfig, Spacing};
pub use flow::{FlowSigmas, dynamic_shift};

/// The denoising steps img2img runs out of `steps` at `strength`: the one
/// formula for admission, progress and the loop. Like diffusers, the UNet
/// pipelines truncate `steps × strength`, while SD3 and Flux truncate the
/// start index after subtracting (so they round the steps run up).
pub fn img2img_steps(kind: SchedulerKind, steps: u32, strength: f32) -> u32 {
    let n = steps as f64;
    // The strength as the caller wrote it (0.6, not f32's 0.6000000238): the
    // truncation is sensitive to the last bit, and diffusers computes in f64.
    let strength: f64 = strength.to_string().parse().unwrap_or(strength as f64);
    let init = (n * strength).min(n);
    let run = if kind.is_flow() {
        n - (n - init).max(0.0).trunc()
    } else {
        init.trunc()
    };
    run as u32
}

use crate::noise::NoiseGenerator;

/// The schedulers we implement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SchedulerKind {
    Euler,
    EulerA,
    Ddim,
    #[serde(rename = "dpmpp_2m")]
    DpmPP2M,
    #[serde(rename = "dpmpp_2m_karras")]
    DpmPP2MKarras,
    Lcm,
    /// Flow matching (SD3, Flux): the only scheduler of those families.
    FlowMatchEuler,
}

impl SchedulerKind {
    pub const ALL: [SchedulerKind; 7] = [
        SchedulerKind::Euler,
        SchedulerKind::EulerA,
        SchedulerKind::Ddim,
        SchedulerKind::DpmPP2M,
        SchedulerKind::DpmPP2MKarras,
        SchedulerKind::Lcm,
        SchedulerKind::FlowMatchEuler,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SchedulerKind::Euler => "euler",
            SchedulerKind::EulerA => "euler_a",
            SchedulerKind::Ddim => "ddim",
            SchedulerKind::DpmPP2M => "dpmpp_2m",
            SchedulerKind::DpmPP2MKarras => "dpmpp_2m_karras",
            SchedulerKind::Lcm => "lcm",
            SchedulerKind::FlowMatchEuler => "flow_match_euler",
        }
    }

    /// Whether the scheduler integrates a velocity (flow-matching models)
    /// rather than denoising a diffusion (UNet models).
    pub fn is_flow(self) -> bool {
        self == SchedulerKind::FlowMatchEuler
    }

    /// The sampler name AUTOMATIC1111 shows for this scheduler.
    pub fn a1111_name(self) -> &'static str {
        match self {
            SchedulerKind::Euler => "Euler",
            SchedulerKind::EulerA => "Euler a",
            SchedulerKind::Ddim => "DDIM",
            SchedulerKind::DpmPP2M => "DPM++ 2M",
            SchedulerKind::DpmPP2MKarras => "DPM++ 2M Karras",
            SchedulerKind::Lcm => "LCM",
            SchedulerKind::FlowMatchEuler => "Euler (flow)",
        }
    }

    /// The scheduler a model folder names in `_class_name`, if we implement it.
    pub fn from_class_name(class: &str, config: &SchedulerConfig) -> Option<Self> {
        Some(match class {
            "EulerDiscreteScheduler" => SchedulerKind::Euler,
            "EulerAncestralDiscreteScheduler" => SchedulerKind::EulerA,
            "DDIMScheduler" => SchedulerKind::Ddim,
            "DPMSolverMultistepScheduler" if config.use_karras_sigmas == Some(true) => {
                SchedulerKind::DpmPP2MKarras
            }
            "DPMSolverMultistepScheduler" => SchedulerKind::DpmPP2M,
            "LCMScheduler" => SchedulerKind::Lcm,
            "FlowMatchEulerDiscreteScheduler" => SchedulerKind::FlowMatchEuler,
            _ => return None,
        })
    }

    pub fn allowed() -> String {
        Self::ALL
            .iter()
            .map(|k| k.name())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl fmt::Display for SchedulerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SchedulerKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let norm = s.trim().to_ascii_lowercase().replace([' ', '-', '+'], "_");
        Ok(match norm.as_str() {
            "euler" => SchedulerKind::Euler,
            "euler_a" | "euler_ancestral" => SchedulerKind::EulerA,
            "ddim" => SchedulerKind::Ddim,
            // "DPM++ 2M" normalises to "dpm___2m".
            "dpmpp_2m" | "dpm___2m" => SchedulerKind::DpmPP2M,
            "dpmpp_2m_karras" | "dpm___2m_karras" => SchedulerKind::DpmPP2MKarras,
            "lcm" => SchedulerKind::Lcm,
            "flow_match_euler" | "euler_(flow)" | "flow_match" => SchedulerKind::FlowMatchEuler,
            _ => {
                return Err(format!(
                    "unknown scheduler `{s}`; expected one of {}",
                    Self::allowed()
                ));
            }
        })
    }
}

/// Per-image solver history.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ItemState {
    /// DPM-Solver++: the previous step's denoised estimate.
    prev_x0: Option<Vec<f32>>,
    lower_order_nums: usize,
}

impl ItemState {
    /// The most `lower_order_nums` gets: DPM++ 2M counts up to its order.
    pub(crate) const MAX_LOWER_ORDER_NUMS: usize = 2;

    /// A saved history (a checkpoint's).
    pub(crate) fn from_parts(prev_x0: Option<Vec<f32>>, lower_order_nums: usize) -> Self {
        Self {
            prev_x0,
            lower_order_nums,
        }
    }

    pub(crate) fn prev_x0(&self) -> Option<&[f32]> {
        self.prev_x0.as_deref()
    }

    pub(crate) fn lower_order_nums(&self) -> usize {
        self.lower_order_nums
    }
}

/// Timesteps and noise levels for one run of `steps` inference steps.
#[derive(Debug, Clone)]
pub struct Schedule {
    kind: SchedulerKind,
    prediction: Prediction,
    spacing: Spacing,
    timesteps: Vec<f32>,
    /// Noise level per step plus the final one (sigma-space schedulers only).
    sigmas: Vec<f32>,
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    train_steps: usize,
    clip_sample: Option<f32>,
    timestep_scaling: f64,
}

#[derive(Debug, thiserror::Error)]
#[error("scheduler config: {0}")]
pub struct ScheduleError(pub String);

impl Schedule {
    pub fn new(
        kind: SchedulerKind,
        config: &SchedulerConfig,
        steps: usize,
    ) -> Result<Self, ScheduleError> {
        if kind.is_flow() && config.flow.use_dynamic_shifting {
            return Err(ScheduleError(
                "this flow-match config shifts by the image size: use Schedule::flow_match".into(),
            ));
        }
        Self::build(kind, config, steps, (FlowSigmas::Uniform, 0))
    }

    /// A flow-matching schedule (SD3, Flux) for an image of `image_tokens`
    /// latent tokens, with the pipeline's way of spreading the sigmas.
    pub fn flow_match(
        config: &SchedulerConfig,
        steps: usize,
        spread: FlowSigmas,
        image_tokens: usize,
    ) -> Result<Self, ScheduleError> {
        Self::build(
            SchedulerKind::FlowMatchEuler,
            config,
            steps,
            (spread, image_tokens),
        )
    }

    fn build(
        kind: SchedulerKind,
        config: &SchedulerConfig,
        steps: usize,
        (spread, image_tokens): (FlowSigmas, usize),
    ) -> Result<Self, ScheduleError> {
        let err = ScheduleError;
        if steps == 0 {
            return Err(err("steps must be at least 1".into()));
        }
        let prediction = config.prediction().map_err(err)?;
        let ac = config.alphas_cumprod().map_err(err)?;
        let n_train = config.num_train_timesteps;
        let default_spacing = match kind {
            SchedulerKind::Ddim | SchedulerKind::Lcm => "leading",
            _ => "linspace",
        };
        let spacing = Spacing::parse(
            config
                .timestep_spacing
                .as_deref()
                .unwrap_or(default_spacing),
        )
        .map_err(err)?;
        let set_alpha_to_one = config.set_alpha_to_one.unwrap_or(true);
        let clip = match kind {
            SchedulerKind::Ddim if config.clip_sample.unwrap_or(true) => {
                Some(config.clip_sample_range.unwrap_or(1.0) as f32)
            }
            SchedulerKind::Lcm if config.clip_sample.unwrap_or(false) => {
                Some(config.clip_sample_range.unwrap_or(1.0) as f32)
            }
            _ => None,
        };
        let train_sigmas: Vec<f32> = ac.iter().map(|&a| ((1.0 - a) / a).sqrt()).collect();
        let offset = config.steps_offset as f64;

        let (timesteps, sigmas): (Vec<f32>, Vec<f32>) = match kind {
            SchedulerKind::Euler | SchedulerKind::EulerA => {
                let ts = spaced(spacing, steps, n_train, offset, false);
                let mut sig: Vec<f64> = ts.iter().map(|&t| interp(t, &train_sigmas)).collect();
                let mut ts = ts;
                if kind == SchedulerKind::Euler && config.use_karras_sigmas == Some(true) {
                    sig = karras(sig[sig.len() - 1], sig[0], steps);
                    ts = sig.iter().map(|&s| sigma_to_t(s, &train_sigmas)).collect();
                }
                sig.push(0.0);
                (to_f32(&ts), to_f32(&sig))
            }
            SchedulerKind::Ddim => {
                let ts = spaced(spacing, steps, n_train, offset, true);
                (to_f32(&ts), Vec::new())
            }
            SchedulerKind::DpmPP2M | SchedulerKind::DpmPP2MKarras => {
                let mut ts = match spacing {
                    Spacing::Linspace => {
                        let mut v: Vec<f64> = linspace64(0.0, (n_train - 1) as f64, steps + 1)
                            .into_iter()
                            .map(f64::round_ties_even)
                            .collect();
                        v.reverse();
                        v.pop();
                        v
                    }
                    Spacing::Leading => {
                        let ratio = (n_train / (steps + 1)) as f64;
                        let mut v: Vec<f64> =
                            (0..=steps).map(|i| i as f64 * ratio + offset).collect();
                        v.reverse();
                        v.pop();
                        v
                    }
                    Spacing::Trailing => spaced(spacing, steps, n_train, offset, true),
                };
                let mut sig: Vec<f64>;
                if kind == SchedulerKind::DpmPP2MKarras {
                    let max = train_sigmas[n_train - 1] as f64;
                    let min = train_sigmas[0] as f64;
                    sig = karras(min, max, steps);
                    ts = sig
                        .iter()
                        .map(|&s| sigma_to_t(s, &train_sigmas).round_ties_even())
                        .collect();
                } else {
                    sig = ts.iter().map(|&t| interp(t, &train_sigmas)).collect();
                }
                sig.push(0.0);
                (to_f32(&ts), to_f32(&sig))
            }
            SchedulerKind::Lcm => {
                let original = config.original_inference_steps.unwrap_or(50);
                if steps > original {
                    return Err(err(format!(
                        "lcm supports at most original_inference_steps ({original}) steps, got {steps}"
                    )));
                }
                let k = n_train / original;
                let mut origin: Vec<f64> = (1..=original).map(|i| (i * k) as f64 - 1.0).collect();
                origin.reverse();
                let ts = (0..steps)
                    .map(|i| {
                        let idx = (i as f64 * origin.len() as f64 / steps as f64).floor() as usize;
                        origin[idx.min(origin.len() - 1)]
                    })
                    .collect::<Vec<_>>();
                (to_f32(&ts), Vec::new())
            }
            SchedulerKind::FlowMatchEuler => {
                let sig = flow::sigmas(&config.flow, n_train, steps, spread, image_tokens)?;
                let ts = sig[..steps].iter().map(|s| s * n_train as f32).collect();
                (ts, sig)
            }
        };
        Ok(Self {
            kind,
            prediction,
            spacing,
            timesteps,
            sigmas,
            final_alpha_cumprod: if set_alpha_to_one { 1.0 } else { ac[0] },
            alphas_cumprod: ac,
            train_steps: n_train,
            clip_sample: clip,
            timestep_scaling: config.timestep_scaling.unwrap_or(10.0),
        })
    }

    pub fn kind(&self) -> SchedulerKind {
        self.kind
    }

    pub fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    /// Noise levels (one per step plus the final one); empty for DDIM and LCM.
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    pub fn steps(&self) -> usize {
        self.timesteps.len()
    }

    /// The standard deviation of the initial noise.
    pub fn init_noise_sigma(&self) -> f32 {
        match self.kind {
            SchedulerKind::Euler | SchedulerKind::EulerA => {
                let max = self.sigmas.iter().copied().fold(0.0f32, f32::max);
                match self.spacing {
                    Spacing::Linspace | Spacing::Trailing => max,
                    Spacing::Leading => (max * max + 1.0).sqrt(),
                }
            }
            _ => 1.0,
        }
    }

    /// Factor the UNet input is multiplied by at step `i`.
    pub fn input_scale(&self, i: usize) -> f32 {
        match self.kind {
            SchedulerKind::Euler | SchedulerKind::EulerA => {
                let s = self.sigmas[i];
                1.0 / (s * s + 1.0).sqrt()
            }
            _ => 1.0,
        }
    }

    /// For img2img: the index of the first step when denoising `strength` of the way.
    pub fn start_index(&self, strength: f32) -> usize {
        let n = self.steps();
        n - img2img_steps(self.kind, n as u32, strength) as usize
    }

    /// Noises clean latents `x0` to the level of step `i` (img2img's start).
    pub fn add_noise(&self, i: usize, x0: &[f32], noise: &[f32]) -> Vec<f32> {
        let (a, b) = match self.kind {
            SchedulerKind::Euler | SchedulerKind::EulerA => (1.0, self.sigmas[i]),
            SchedulerKind::DpmPP2M | SchedulerKind::DpmPP2MKarras => {
                let (alpha, sigma) = alpha_sigma(self.sigmas[i]);
                (alpha, sigma)
            }
            SchedulerKind::Ddim | SchedulerKind::Lcm => {
                let ac = self.alphas_cumprod[self.timesteps[i] as usize];
                (ac.sqrt(), (1.0 - ac).sqrt())
            }
            // diffusers' `scale_noise`: interpolate towards the noise.
            SchedulerKind::FlowMatchEuler => (1.0 - self.sigmas[i], self.sigmas[i]),
        };
        x0.iter().zip(noise).map(|(x, n)| a * x + b * n).collect()
    }

    fn alpha_at(&self, t: i64) -> f32 {
        if t >= 0 {
            self.alphas_cumprod[t as usize]
        } else {
            self.final_alpha_cumprod
        }
    }

    /// The denoised estimate x0 from a model output at noise level sigma (sigma-space form).
    fn x0_from_sigma(&self, sigma: f32, sample: f32, out: f32) -> f32 {
        match self.prediction {
            Prediction::Epsilon => sample - sigma * out,
            Prediction::VPrediction => {
                out * (-sigma / (sigma * sigma + 1.0).sqrt()) + sample / (sigma * sigma + 1.0)
            }
            Prediction::Sample => out,
        }
    }

    /// x0 and epsilon from a model output at cumulative alpha `a` (DDPM form).
    fn x0_eps_from_alpha(&self, a: f32, sample: f32, out: f32) -> (f32, f32) {
        let (sa, sb) = (a.sqrt(), (1.0 - a).sqrt());
        match self.prediction {
            Prediction::Epsilon => ((sample - sb * out) / sa, out),
            Prediction::VPrediction => (sa * sample - sb * out, sa * out + sb * sample),
            Prediction::Sample => (out, (sample - sa * out) / sb),
        }
    }

    /// The model's estimate of the clean latents at step `i`, from its
    /// output on `sample` (before [`Schedule::step`] moves it): what a
    /// preview shows, since the noisy sample itself is mostly noise early on.
    pub fn denoised(&self, i: usize, model_output: &[f32], sample: &[f32]) -> Vec<f32> {
        let pairs = sample.iter().zip(model_output);
        match self.kind {
            SchedulerKind::Euler | SchedulerKind::EulerA => {
                let sigma = self.sigmas[i];
                pairs
                    .map(|(&x, &e)| self.x0_from_sigma(sigma, x, e))
                    .collect()
            }
            SchedulerKind::Ddim | SchedulerKind::Lcm => {
                let a = self.alpha_at(self.timesteps[i] as i64);
                pairs
                    .map(|(&x, &e)| self.x0_eps_from_alpha(a, x, e).0)
                    .collect()
            }
            SchedulerKind::DpmPP2M | SchedulerKind::DpmPP2MKarras => {
                let (alpha, sigma) = alpha_sigma(self.sigmas[i]);
                pairs
                    .map(|(&x, &e)| match self.prediction {
                        Prediction::Epsilon => (x - sigma * e) / alpha,
                        Prediction::VPrediction => alpha * x - sigma * e,
                        Prediction::Sample => e,
                    })
                    .collect()
            }
            // Flow matching: x_t = (1 - s) x0 + s noise and v = noise - x0.
            SchedulerKind::FlowMatchEuler => {
                let s = self.sigmas[i];
                pairs.map(|(&x, &v)| x - s * v).collect()
            }
        }
    }

    /// Advances one image's latents `sample` from step `i` to `i + 1`.
    pub fn step(
        &self,
        i: usize,
        model_output: &[f32],
        sample: &mut [f32],
        state: &mut ItemState,
        noise: &mut NoiseGenerator,
    ) {
        match self.kind {
            SchedulerKind::Euler => {
                let (sigma, next) = (self.sigmas[i], self.sigmas[i + 1]);
                for (x, &e) in sample.iter_mut().zip(model_output) {
                    let x0 = self.x0_from_sigma(sigma, *x, e);
                    let d = (*x - x0) / sigma;
                    *x += d * (next - sigma);
                }
            }
            SchedulerKind::EulerA => {
                let (from, to) = (self.sigmas[i], self.sigmas[i + 1]);
                let up = (to * to * (from * from - to * to) / (from * from)).sqrt();
                let down = (to * to - up * up).sqrt();
                let z = noise.randn(sample.len());
                for ((x, &e), n) in sample.iter_mut().zip(model_output).zip(z) {
                    let x0 = self.x0_from_sigma(from, *x, e);
                    let d = (*x - x0) / from;
                    *x = *x + d * (down - from) + n * up;
                }
            }
            SchedulerKind::Ddim => {
                let t = self.timesteps[i] as i64;
                let prev = t - (self.train_steps / self.steps()) as i64;
                let (a, a_prev) = (self.alpha_at(t), self.alpha_at(prev));
                for (x, &e) in sample.iter_mut().zip(model_output) {
                    let (mut x0, eps) = self.x0_eps_from_alpha(a, *x, e);
                    if let Some(r) = self.clip_sample {
                        x0 = x0.clamp(-r, r);
                    }
                    *x = a_prev.sqrt() * x0 + (1.0 - a_prev).sqrt() * eps;
                }
            }
            SchedulerKind::DpmPP2M | SchedulerKind::DpmPP2MKarras => {
                self.dpm_step(i, model_output, sample, state)
            }
            SchedulerKind::FlowMatchEuler => {
                let dt = self.sigmas[i + 1] - self.sigmas[i];
                for (x, &v) in sample.iter_mut().zip(model_output) {
                    *x += dt * v;
                }
            }
            SchedulerKind::Lcm => {
                let t = self.timesteps[i] as i64;
                let last = i + 1 == self.steps();
                let prev = if last {
                    t
                } else {
                    self.timesteps[i + 1] as i64
                };
                let (a, a_prev) = (self.alpha_at(t), self.alpha_at(prev));
                let scaled = t as f64 * self.timestep_scaling;
                let c_skip = (0.25 / (scaled * scaled + 0.25)) as f32;
                let c_out = (scaled / (scaled * scaled + 0.25).sqrt()) as f32;
                let z = if last {
                    None
                } else {
                    Some(noise.randn(sample.len()))
                };
                for (k, (x, &e)) in sample.iter_mut().zip(model_output).enumerate() {
                    let (mut x0, _) = self.x0_eps_from_alpha(a, *x, e);
                    if let Some(r) = self.clip_sample {
                        x0 = x0.clamp(-r, r);
                    }
                    let denoised = c_out * x0 + c_skip * *x;
                    *x = match &z {
                        Some(z) => a_prev.sqrt() * denoised + (1.0 - a_prev).sqrt() * z[k],
                        None => denoised,
                    };
                }
            }
        }
    }

    /// DPM-Solver++ (2M, midpoint): second order once a previous estimate
    /// exists, first order at the final step (diffusers' `final_sigmas_type="zero"`).
    fn dpm_step(&self, i: usize, model_output: &[f32], sample: &mut [f32], state: &mut ItemState) {
        let n = self.steps();
        let sigma_s = self.sigmas[i];
        let sigma_next = self.sigmas[i + 1];
        let x0: Vec<f32> = sample
            .iter()
            .zip(model_output)
            .map(|(&x, &e)| {
                let (alpha, sigma) = alpha_sigma(sigma_s);
                match self.prediction {
                    Prediction::Epsilon => (x - sigma * e) / alpha,
                    Prediction::VPrediction => alpha * x - sigma * e,
                    Prediction::Sample => e,
                }
            })
            .collect();
        let lower_order_final = i == n - 1;
        let (alpha_t, sigma_t) = alpha_sigma(sigma_next);
        let (alpha_s0, sigma_s0) = alpha_sigma(sigma_s);
        let lambda = |a: f32, s: f32| (a as f64).ln() - (s as f64).ln();
        let lambda_t = lambda(alpha_t, sigma_t);
        let lambda_s0 = lambda(alpha_s0, sigma_s0);
        let h = lambda_t - lambda_s0;
        let ratio = sigma_t / sigma_s0;
        let coef = (alpha_t as f64 * ((-h).exp() - 1.0)) as f32;
        match (
            &state.prev_x0,
            state.lower_order_nums < 1 || lower_order_final,
        ) {
            (Some(prev), false) => {
                let (alpha_s1, sigma_s1) = alpha_sigma(self.sigmas[i - 1]);
                let h0 = lambda_s0 - lambda(alpha_s1, sigma_s1);
                let r0 = (h0 / h) as f32;
                for ((x, &m0), &m1) in sample.iter_mut().zip(&x0).zip(prev) {
                    let d1 = (m0 - m1) / r0;
                    *x = ratio * *x - coef * m0 - 0.5 * coef * d1;
                }
            }
            _ => {
                for (x, &m0) in sample.iter_mut().zip(&x0) {
                    *x = ratio * *x - coef * m0;
                }
            }
        }
        state.prev_x0 = Some(x0);
        if state.lower_order_nums < ItemState::MAX_LOWER_ORDER_NUMS {
            state.lower_order_nums += 1;
        }
    }
}

fn alpha_sigma(sigma: f32) -> (f32, f32) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    (alpha, sigma * alpha)
}

fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// Inference timesteps (descending) for Euler-style (`ints == false`) and
/// DDIM-style (`ints == true`) schedulers.
fn spaced(spacing: Spacing, steps: usize, n_train: usize, offset: f64, ints: bool) -> Vec<f64> {
    let mut ts: Vec<f64> = match spacing {
        Spacing::Linspace => linspace64(0.0, (n_train - 1) as f64, steps)
            .into_iter()
            .map(|t| if ints { t.round_ties_even() } else { t })
            .collect(),
        Spacing::Leading => {
            let ratio = (n_train / steps) as f64;
            (0..steps).map(|i| i as f64 * ratio + offset).collect()
        }
        Spacing::Trailing => {
            let ratio = n_train as f64 / steps as f64;
            let mut v: Vec<f64> = (0..steps)
                .map(|k| (n_train as f64 - k as f64 * ratio).round_ties_even() - 1.0)
                .collect();
            v.reverse();
            v
        }
    };
    ts.reverse();
    ts
}

/// numpy.interp of the training sigmas at a (fractional) timestep.
fn interp(t: f64, sigmas: &[f32]) -> f64 {
    let last = sigmas.len() - 1;
    if t <= 0.0 {
        return sigmas[0] as f64;
    }
    if t >= last as f64 {
        return sigmas[last] as f64;
    }
    let lo = t.floor() as usize;
    let w = t - lo as f64;
    let (a, b) = (sigmas[lo] as f64, sigmas[lo + 1] as f64);
    a + (b - a) * w
}

/// Karras et al. (2022) noise levels between `min` and `max`, rho = 7.
fn karras(min: f64, max: f64, steps: usize) -> Vec<f64> {
    let rho = 7.0;
    let (min_inv, max_inv) = (min.powf(1.0 / rho), max.powf(1.0 / rho));
    linspace64(0.0, 1.0, steps)
        .into_iter()
        .map(|r| (max_inv + r * (min_inv - max_inv)).powf(rho))
        .collect()
}

/// The (fractional) training timestep whose sigma is `sigma`, by log-linear interpolation.
fn sigma_to_t(sigma: f64, train_sigmas: &[f32]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    let logs: Vec<f64> = train_sigmas.iter().map(|&s| (s as f64).ln()).collect();
    let count = logs.iter().filter(|&&l| log_sigma - l >= 0.0).count();
    let low = count.saturating_sub(1).min(logs.len() - 2);
    let (lo, hi) = (logs[low], logs[low + 1]);
    let w = ((lo - log_sigma) / (lo - hi)).clamp(0.0, 1.0);
    (1.0 - w) * low as f64 + w * (low + 1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_a1111_names() {
        for k in SchedulerKind::ALL {
            assert_eq!(k.name().parse::<SchedulerKind>().unwrap(), k);
            assert_eq!(k.a1111_name().parse::<SchedulerKind>().unwrap(), k);
        }
        assert_eq!(
            SchedulerKind::from_class_name(
                "FlowMatchEulerDiscreteScheduler",
                &SchedulerConfig::default()
            ),
            Some(SchedulerKind::FlowMatchEuler)
        );
        let e = "heun".parse::<SchedulerKind>().unwrap_err();
        assert!(e.contains("euler, euler_a"), "{e}");
    }

    #[test]
    fn trailing_single_step_starts_at_the_last_timestep() {
        let cfg = SchedulerConfig {
            timestep_spacing: Some("trailing".into()),
            ..SchedulerConfig::default()
        };
        let s = Schedule::new(SchedulerKind::EulerA, &cfg, 1).unwrap();
        assert_eq!(s.timesteps(), &[999.0]);
        assert_eq!(s.sigmas().len(), 2);
    }

    #[test]
    fn img2img_start_index() {
        let s = Schedule::new(SchedulerKind::Ddim, &SchedulerConfig::default(), 10).unwrap();
        assert_eq!(s.start_index(1.0), 0);
        assert_eq!(s.start_index(0.6), 4);
        assert_eq!(s.start_index(0.0), 10);
    }

    /// With a perfect model output the denoised estimate is the clean latent,
    /// for every parametrisation the schedulers use.
    #[test]
    fn denoised_recovers_the_clean_latents_from_a_perfect_prediction() {
        let x0 = [0.5f32, -1.25, 2.0, 0.0];
        let eps = [1.0f32, -0.5, 0.25, -2.0];
        let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(a, b)| (a - b).abs() < 1e-4);
        let cfg = SchedulerConfig::default();
        for kind in [
            SchedulerKind::Euler,
            SchedulerKind::EulerA,
            SchedulerKind::DpmPP2M,
            SchedulerKind::Ddim,
            SchedulerKind::Lcm,
        ] {
            let s = Schedule::new(kind, &cfg, 10).unwrap();
            let i = 3;
            let sample: Vec<f32> = match kind {
                SchedulerKind::Ddim | SchedulerKind::Lcm => {
                    let a = s.alpha_at(s.timesteps[i] as i64);
                    x0.iter()
                        .zip(eps)
                        .map(|(x, e)| a.sqrt() * x + (1.0 - a).sqrt() * e)
                        .collect()
                }
                SchedulerKind::DpmPP2M => {
                    let (alpha, sigma) = alpha_sigma(s.sigmas[i]);
                    x0.iter()
                        .zip(eps)
                        .map(|(x, e)| alpha * x + sigma * e)
                        .collect()
                }
                _ => {
                    let sigma = s.sigmas[i];
                    x0.iter().zip(eps).map(|(x, e)| x + sigma * e).collect()
                }
            };
            let got = s.denoised(i, &eps, &sample);
            assert!(close(&got, &x0), "{kind:?}: {got:?}");
            // Not the identity: the noisy sample itself is far from x0.
            assert!(!close(&sample, &x0), "{kind:?}");
        }
        let mut flow_cfg = SchedulerConfig::default();
        flow_cfg.flow.shift = 3.0;
        let s = Schedule::new(SchedulerKind::FlowMatchEuler, &flow_cfg, 10).unwrap();
        let sig = s.sigmas[2];
        let noise = eps;
        let sample: Vec<f32> = x0
            .iter()
            .zip(noise)
            .map(|(x, n)| (1.0 - sig) * x + sig * n)
            .collect();
        let v: Vec<f32> = x0.iter().zip(noise).map(|(x, n)| n - x).collect();
        assert!(close(&s.denoised(2, &v, &sample), &x0));
    }
}
