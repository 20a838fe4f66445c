//! `scheduler/scheduler_config.json` as diffusers writes it.
//!
//! diffusers' `from_config` carries over the keys a file has and uses the
//! target scheduler's defaults for the rest; the `Option`s here keep that
//! distinction so each scheduler can apply its own default.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
pub struct SchedulerConfig {
    #[serde(rename = "_class_name", default)]
    pub class_name: Option<String>,
    #[serde(default = "default_train_steps")]
    pub num_train_timesteps: usize,
    #[serde(default = "default_beta_start")]
    pub beta_start: f64,
    #[serde(default = "default_beta_end")]
    pub beta_end: f64,
    #[serde(default = "default_beta_schedule")]
    pub beta_schedule: String,
    #[serde(default)]
    pub trained_betas: Option<Vec<f64>>,
    #[serde(default = "default_prediction")]
    pub prediction_type: String,
    #[serde(default)]
    pub timestep_spacing: Option<String>,
    #[serde(default)]
    pub steps_offset: usize,
    #[serde(default)]
    pub set_alpha_to_one: Option<bool>,
    #[serde(default)]
    pub clip_sample: Option<bool>,
    #[serde(default)]
    pub clip_sample_range: Option<f64>,
    #[serde(default)]
    pub use_karras_sigmas: Option<bool>,
    #[serde(default)]
    pub rescale_betas_zero_snr: Option<bool>,
    #[serde(default)]
    pub original_inference_steps: Option<usize>,
    #[serde(default)]
    pub timestep_scaling: Option<f64>,
    /// Flow matching (`FlowMatchEulerDiscreteScheduler`, SD3 and Flux).
    #[serde(flatten)]
    pub flow: FlowConfig,
}

/// The flow-match scheduler's keys, with diffusers' defaults.
#[derive(Debug, Clone, Deserialize)]
pub struct FlowConfig {
    #[serde(default = "one")]
    pub shift: f64,
    #[serde(default)]
    pub use_dynamic_shifting: bool,
    #[serde(default = "default_base_shift")]
    pub base_shift: f64,
    #[serde(default = "default_max_shift")]
    pub max_shift: f64,
    #[serde(default = "default_base_seq")]
    pub base_image_seq_len: usize,
    #[serde(default = "default_max_seq")]
    pub max_image_seq_len: usize,
    #[serde(default)]
    pub time_shift_type: Option<String>,
    #[serde(default)]
    pub shift_terminal: Option<f64>,
    #[serde(default)]
    pub invert_sigmas: Option<bool>,
    #[serde(default)]
    pub stochastic_sampling: Option<bool>,
    #[serde(default)]
    pub use_exponential_sigmas: Option<bool>,
    #[serde(default)]
    pub use_beta_sigmas: Option<bool>,
}

impl Default for FlowConfig {
    fn default() -> Self {
        Self {
            shift: 1.0,
            use_dynamic_shifting: false,
            base_shift: default_base_shift(),
            max_shift: default_max_shift(),
            base_image_seq_len: default_base_seq(),
            max_image_seq_len: default_max_seq(),
            time_shift_type: None,
            shift_terminal: None,
            invert_sigmas: None,
            stochastic_sampling: None,
            use_exponential_sigmas: None,
            use_beta_sigmas: None,
        }
    }
}

fn one() -> f64 {
    1.0
}
fn default_base_shift() -> f64 {
    0.5
}
fn default_max_shift() -> f64 {
    1.15
}
fn default_base_seq() -> usize {
    256
}
fn default_max_seq() -> usize {
    4096
}

fn default_train_steps() -> usize {
    1000
}
fn default_beta_start() -> f64 {
    0.0001
}
fn default_beta_end() -> f64 {
    0.02
}
fn default_beta_schedule() -> String {
    "linear".into()
}
fn default_prediction() -> String {
    "epsilon".into()
}

impl Default for SchedulerConfig {
    /// The Stable Diffusion 1.x training schedule.
    fn default() -> Self {
        Self {
            class_name: None,
            num_train_timesteps: 1000,
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: "scaled_linear".into(),
            trained_betas: None,
            prediction_type: "epsilon".into(),
            timestep_spacing: None,
            steps_offset: 1,
            set_alpha_to_one: Some(false),
            clip_sample: Some(false),
            clip_sample_range: None,
            use_karras_sigmas: None,
            rescale_betas_zero_snr: None,
            original_inference_steps: None,
            timestep_scaling: None,
            flow: FlowConfig::default(),
        }
    }
}

/// What the UNet predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prediction {
    Epsilon,
    VPrediction,
    Sample,
}

/// How inference timesteps are spread over the training range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spacing {
    Linspace,
    Leading,
    Trailing,
}

impl Spacing {
    pub(crate) fn parse(s: &str) -> Result<Self, String> {
        match s {
            "linspace" => Ok(Self::Linspace),
            "leading" => Ok(Self::Leading),
            "trailing" => Ok(Self::Trailing),
            other => Err(format!(
                "timestep_spacing `{other}` is not supported; expected linspace, leading or trailing"
            )),
        }
    }
}

impl SchedulerConfig {
    pub fn prediction(&self) -> Result<Prediction, String> {
        match self.prediction_type.as_str() {
            "epsilon" => Ok(Prediction::Epsilon),
            "v_prediction" => Ok(Prediction::VPrediction),
            "sample" => Ok(Prediction::Sample),
            other => Err(format!(
                "prediction_type `{other}` is not supported; expected epsilon, v_prediction or sample"
            )),
        }
    }

    /// Cumulative products of `1 - beta`, in f32 like diffusers (torch float32).
    pub(crate) fn alphas_cumprod(&self) -> Result<Vec<f32>, String> {
        let n = self.num_train_timesteps;
        if n < 2 {
            return Err(format!("num_train_timesteps must be at least 2, got {n}"));
        }
        let betas: Vec<f32> = if let Some(b) = &self.trained_betas {
            b.iter().map(|&x| x as f32).collect()
        } else {
            match self.beta_schedule.as_str() {
                "linear" => linspace(self.beta_start as f32, self.beta_end as f32, n),
                "scaled_linear" => linspace(
                    (self.beta_start as f32).sqrt(),
                    (self.beta_end as f32).sqrt(),
                    n,
                )
                .into_iter()
                .map(|x| x * x)
                .collect(),
                "squaredcos_cap_v2" => {
                    let alpha_bar = |t: f64| {
                        ((t + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2)
                            .cos()
                            .powi(2)
                    };
                    (0..n)
                        .map(|i| {
                            let t1 = i as f64 / n as f64;
                            let t2 = (i + 1) as f64 / n as f64;
                            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
                        })
                        .collect()
                }
                other => {
                    return Err(format!(
                        "beta_schedule `{other}` is not supported; expected linear, scaled_linear or squaredcos_cap_v2"
                    ));
                }
            }
        };
        if self.rescale_betas_zero_snr == Some(true) {
            return Err("rescale_betas_zero_snr is not supported".into());
        }
        let mut acc = 1.0f32;
        Ok(betas
            .iter()
            .map(|b| {
                acc *= 1.0 - b;
                acc
            })
            .collect())
    }
}

/// torch.linspace in float32: filled from both ends towards the middle.
pub(crate) fn linspace(start: f32, end: f32, n: usize) -> Vec<f32> {
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f32;
    let half = n / 2;
    (0..n)
        .map(|i| {
            if i < half {
                start + step * i as f32
            } else {
                end - step * (n - 1 - i) as f32
            }
        })
        .collect()
}

/// numpy.linspace in float64.
pub(crate) fn linspace64(start: f64, end: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f64;
    (0..n)
        .map(|i| {
            if i == n - 1 {
                end
            } else {
                start + step * i as f64
            }
        })
        .collect()
}
