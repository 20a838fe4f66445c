//! How to start and supervise the sidecar.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use anyaccel_executor::{DeviceKind, list_choices};

/// Where the sidecar runs its model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SidecarDevice {
    /// Neuron when its SDK and devices are present, else CUDA when torch sees a GPU, else CPU.
    #[default]
    Auto,
    Cpu,
    Cuda,
    Neuron,
}

impl SidecarDevice {
    /// Every choice, in the order they are listed.
    pub const ALL: [SidecarDevice; 4] = [
        SidecarDevice::Auto,
        SidecarDevice::Cpu,
        SidecarDevice::Cuda,
        SidecarDevice::Neuron,
    ];

    /// The device this pins the sidecar to; `None` for detection.
    pub fn kind(self) -> Option<DeviceKind> {
        match self {
            SidecarDevice::Auto => None,
            SidecarDevice::Cpu => Some(DeviceKind::Cpu),
            SidecarDevice::Cuda => Some(DeviceKind::Cuda),
            SidecarDevice::Neuron => Some(DeviceKind::Neuron),
        }
    }

    /// The sidecar's `--device` spelling: the [`DeviceKind`]'s name, or `auto`.
    pub fn as_str(self) -> &'static str {
        self.kind().map_or("auto", DeviceKind::as_str)
    }
}

impl fmt::Display for SidecarDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SidecarDevice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|d| d.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown sidecar device `{s}`; expected {}",
                    list_choices(Self::ALL.map(Self::as_str))
                )
            })
    }
}

/// `torch.compile` for a torch sidecar's denoiser. Each mode compiles once per
/// input shape, on the first call at it (the server's warm-up, for its sizes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TorchCompile {
    /// Eager PyTorch.
    #[default]
    Off,
    /// Inductor's kernels.
    Default,
    /// Inductor plus CUDA graph replay (what small batches gain most from).
    ReduceOverhead,
    /// Inductor with autotuned matmuls and convolutions (the longest compile).
    MaxAutotune,
}

impl TorchCompile {
    pub const ALL: [TorchCompile; 4] = [
        TorchCompile::Off,
        TorchCompile::Default,
        TorchCompile::ReduceOverhead,
        TorchCompile::MaxAutotune,
    ];

    /// The sidecar's `--compile` spelling (torch.compile's mode names).
    pub fn as_str(self) -> &'static str {
        match self {
            TorchCompile::Off => "off",
            TorchCompile::Default => "default",
            TorchCompile::ReduceOverhead => "reduce-overhead",
            TorchCompile::MaxAutotune => "max-autotune",
        }
    }
}

impl fmt::Display for TorchCompile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TorchCompile {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown torch.compile mode `{s}`; expected {}",
                    list_choices(Self::ALL.map(Self::as_str))
                )
            })
    }
}

/// Restart delays: `initial`, doubling per consecutive failure up to `max`. A
/// sidecar that served for at least `reset_after` starts the count again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub reset_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
            reset_after: Duration::from_secs(60),
        }
    }
}

impl Backoff {
    /// Delay before restart number `failures` (1-based) of a run of failures.
    pub fn delay(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(20);
        self.initial.saturating_mul(1u32 << exp).min(self.max)
    }
}

/// Everything [`crate::RemoteExecutor::spawn`] needs.
#[derive(Debug, Clone)]
pub struct RemoteConfig {
    /// Python interpreter of the sidecar's environment (e.g. `.venv/bin/python`).
    pub python: PathBuf,
    /// Prepended to `PYTHONPATH`: the repo's `python/` folder when the
    /// `anyaccel-sidecar` package is not installed in that environment.
    pub python_path: Option<PathBuf>,
    /// What the sidecar loads: a diffusers folder or Hub id (torch), or an
    /// optimum-neuron compiled folder (neuron).
    pub model: String,
    pub device: SidecarDevice,
    /// `fp32`, `fp16` or `bf16` for the torch backends; `None`: fp32 on CPU, fp16 on CUDA.
    pub dtype: Option<String>,
    /// torch intra-op threads; `None` leaves torch's default.
    pub threads: Option<usize>,
    /// torch backends only; a Neuron sidecar refuses anything but `Off`.
    pub compile: TorchCompile,
    /// Unix socket path; `None` picks one in the temp dir.
    pub socket: Option<PathBuf>,
    /// How long a start may take until the model is served (Neuron loads take minutes).
    pub startup_timeout: Duration,
    /// Health probe period while serving, and how long one probe may take.
    pub health_interval: Duration,
    pub health_timeout: Duration,
    /// Consecutive failed probes after which a live but unresponsive sidecar is killed.
    pub health_failures: u32,
    /// Longest a single component call may take; `None`: no limit (a dead
    /// sidecar still fails the call at once).
    pub call_timeout: Option<Duration>,
    pub backoff: Backoff,
    /// Extra environment variables for the sidecar (e.g. `NEURON_RT_VISIBLE_CORES`).
    pub env: Vec<(String, String)>,
    /// Extra command-line arguments for the sidecar, e.g. `--static-batch 2
    /// --static-size 64x64` to make a torch sidecar enforce Neuron-style fixed shapes.
    pub extra_args: Vec<String>,
}

impl RemoteConfig {
    /// Defaults for `model` run by `python`.
    pub fn new(python: impl Into<PathBuf>, model: impl Into<String>) -> Self {
        Self {
            python: python.into(),
            python_path: None,
            model: model.into(),
            device: SidecarDevice::Auto,
            dtype: None,
            threads: None,
            compile: TorchCompile::Off,
            socket: None,
            startup_timeout: Duration::from_secs(900),
            health_interval: Duration::from_secs(5),
            health_timeout: Duration::from_secs(10),
            health_failures: 3,
            call_timeout: None,
            backoff: Backoff::default(),
            env: Vec::new(),
            extra_args: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let b = Backoff::default();
        assert_eq!(b.delay(1), Duration::from_millis(500));
        assert_eq!(b.delay(2), Duration::from_secs(1));
        assert_eq!(b.delay(4), Duration::from_secs(4));
        assert_eq!(b.delay(7), Duration::from_secs(30));
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn devices_parse() {
        assert_eq!("neuron".parse::<SidecarDevice>(), Ok(SidecarDevice::Neuron));
        assert_eq!(
            "tpu".parse::<SidecarDevice>().unwrap_err(),
            "unknown sidecar device `tpu`; expected auto, cpu, cuda or neuron"
        );
        for d in SidecarDevice::ALL {
            assert_eq!(d.as_str().parse(), Ok(d));
        }
    }
}
