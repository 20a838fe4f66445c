//! One ONNX Runtime session per model component, adapting our f32 host
//! tensors to whatever input names and dtypes the exported graph declares.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyaccel_executor::{Component, Dtype, ExecutorError, Tensor, TokenIds, UnetInput};
use half::f16;
use ort::ep::{self, ExecutionProvider};
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{DynValue, TensorElementType, ValueType};

use crate::device::{Device, Provider};
use crate::{OnnxConfig, OnnxError, Optimization};

pub(crate) struct ComponentSession {
    component: Component,
    // `Session::run` takes `&mut self`; components run one call at a time anyway
    // because the pipeline serialises batches on an executor.
    session: Mutex<Session>,
    /// Name and element type of each declared input.
    inputs: Vec<(String, TensorElementType)>,
    /// Shape each input declares (-1 where dynamic), for the warm-up run.
    shapes: Vec<(String, Vec<i64>)>,
    /// Rank the graph declares for `timestep`: optimum exports a scalar (0), older exports `[1]`.
    timestep_rank: usize,
    output: String,
}

/// OpenVINO on the CPU. The precision is always stated: OpenVINO's own default is
/// bf16 on AMX CPUs, and f32 must stay f32 when asked for.
fn openvino(bf16: bool, threads: Option<usize>) -> ep::OpenVINO {
    use ort::ep::ArbitrarilyConfigurableExecutionProvider;
    let threads = threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let hint = if bf16 { "bf16" } else { "f32" };
    ep::OpenVINO::default()
        .with_device_type("CPU")
        .with_num_threads(threads)
        .with_arbitrary_config(
            "load_config",
            format!(r#"{{"CPU": {{"INFERENCE_PRECISION_HINT": "{hint}"}}}}"#),
        )
}

fn element_type(ty: &ValueType) -> Option<TensorElementType> {
    ty.tensor_type()
}

impl ComponentSession {
    pub(crate) fn open(
        component: Component,
        path: &Path,
        device: &Device,
        config: &OnnxConfig,
    ) -> Result<Self, OnnxError> {
        let load = |message: String| OnnxError::Load {
            path: path.to_path_buf(),
            message,
        };
        let env = crate::runtime::environment()
            .ok_or_else(|| load("ONNX Runtime is not loaded".into()))?;
        let level = match config.optimization {
            Optimization::Disable => GraphOptimizationLevel::Disable,
            Optimization::Basic => GraphOptimizationLevel::Level1,
            Optimization::Extended => GraphOptimizationLevel::Level2,
            Optimization::All => GraphOptimizationLevel::All,
        };
        let mut builder = Session::builder(env)
            .map_err(|e| load(e.to_string()))?
            .with_optimization_level(level)
            .map_err(|e| load(e.to_string()))?;
        builder = builder
            .with_memory_pattern(config.memory_pattern)
            .map_err(|e| load(e.to_string()))?
            .with_prepacking(config.prepacking)
            .map_err(|e| load(e.to_string()))?;
        if !config.memory_arena {
            ep::CPU::default()
                .with_arena_allocator(false)
                .register(&mut builder)
                .map_err(|e| load(e.to_string()))?;
        }
        if let Some(n) = config.intra_threads {
            builder = builder
                .with_intra_threads(n)
                .map_err(|e| load(e.to_string()))?;
        }
        if let Some(n) = config.inter_threads {
            builder = builder
                .with_inter_threads(n)
                .map_err(|e| load(e.to_string()))?
                .with_parallel_execution(n > 1)
                .map_err(|e| load(e.to_string()))?;
        }
        match device.provider {
            Provider::Cpu => {}
            Provider::Cuda => {
                ep::CUDA::default().register(&mut builder).map_err(|e| {
                    load(format!("could not enable the CUDA execution provider: {e}"))
                })?;
            }
            Provider::OpenVino { bf16 } => {
                openvino(bf16, config.intra_threads)
                    .register(&mut builder)
                    .map_err(|e| {
                        load(format!(
                            "could not enable the OpenVINO execution provider: {e}"
                        ))
                    })?;
            }
        }
        let session = builder.commit_from_file(path).map_err(|e| {
            let hint = if matches!(device.provider, Provider::OpenVino { .. }) {
                "; OpenVINO takes the plain ONNX export, not a graph fused for ONNX Runtime's \
                 CPU kernels (compile it with `anyaccel compile --target onnx-openvino`)"
            } else {
                " (corrupt or truncated file, or external data missing beside it)"
            };
            load(format!("not a loadable ONNX model{hint}: {e}"))
        })?;
        let inputs: Vec<(String, TensorElementType)> = session
            .inputs()
            .iter()
            .filter_map(|o| element_type(o.dtype()).map(|t| (o.name().to_string(), t)))
            .collect();
        let shapes: Vec<(String, Vec<i64>)> = session
            .inputs()
            .iter()
            .filter_map(|o| {
                let shape = o.dtype().tensor_shape()?;
                Some((o.name().to_string(), shape.iter().copied().collect()))
            })
            .collect();
        let timestep_rank = shapes
            .iter()
            .find(|(n, _)| n == "timestep")
            .map_or(1, |(_, s)| s.len());
        let output = session
            .outputs()
            .first()
            .map(|o| o.name().to_string())
            .ok_or_else(|| load("the graph declares no outputs".into()))?;
        let this = Self {
            component,
            session: Mutex::new(session),
            inputs,
            shapes,
            timestep_rank,
            output,
        };
        this.check_signature(path)?;
        tracing::debug!(%component, inputs = ?this.inputs, output = %this.output, "session ready");
        Ok(this)
    }

    fn check_signature(&self, path: &Path) -> Result<(), OnnxError> {
        let required: &[&str] = match self.component {
            Component::TextEncoder => &["input_ids"],
            Component::Unet => &["sample", "timestep", "encoder_hidden_states"],
            Component::VaeDecoder => &["latent_sample"],
            Component::VaeEncoder => &["sample"],
        };
        for name in required {
            if self.input_type(name).is_none() {
                return Err(OnnxError::Signature {
                    component: self.component,
                    path: PathBuf::from(path),
                    message: format!(
                        "expected an input named `{name}` (optimum's ONNX export); the graph has {:?}",
                        self.inputs
                            .iter()
                            .map(|(n, _)| n.as_str())
                            .collect::<Vec<_>>()
                    ),
                });
            }
        }
        Ok(())
    }

    /// One run at a small size (8x8 latents where the graph's shapes are
    /// dynamic, its own sizes where they are fixed). OpenVINO packs its weights
    /// on a graph's first run; doing it at load keeps that cost off the first
    /// request, and afterwards the mapped model file is no longer read.
    pub(crate) fn warm_up(&self) -> Result<(), ExecutorError> {
        let dims = |name: &str, fallback: &[usize]| -> Vec<usize> {
            let declared = self
                .shapes
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, s)| s.as_slice())
                .unwrap_or_default();
            fallback
                .iter()
                .enumerate()
                .map(|(axis, &f)| {
                    declared
                        .get(axis)
                        .and_then(|&d| usize::try_from(d).ok())
                        .filter(|&d| d > 0)
                        .unwrap_or(f)
                })
                .collect()
        };
        match self.component {
            Component::TextEncoder => {
                let shape = dims("input_ids", &[1, 77]);
                let ids = TokenIds {
                    batch: shape[0],
                    len: shape[1],
                    ids: vec![0; shape[0] * shape[1]],
                };
                self.encode_text(&ids)?;
            }
            Component::Unet => {
                let sample = dims("sample", &[1, 4, 8, 8]);
                let mut text = dims("encoder_hidden_states", &[sample[0], 77, 768]);
                text[0] = sample[0];
                self.unet(UnetInput {
                    sample: &Tensor::zeros(sample),
                    timestep: 500.0,
                    encoder_hidden_states: &Tensor::zeros(text),
                })?;
            }
            Component::VaeDecoder => {
                self.single(&Tensor::zeros(dims("latent_sample", &[1, 4, 8, 8])))?;
            }
            Component::VaeEncoder => {
                self.single(&Tensor::zeros(dims("sample", &[1, 3, 64, 64])))?;
            }
        }
        Ok(())
    }

    fn input_type(&self, name: &str) -> Option<TensorElementType> {
        self.inputs.iter().find(|(n, _)| n == name).map(|(_, t)| *t)
    }

    /// Dtype of the component's main floating-point input.
    pub(crate) fn dtype(&self) -> Dtype {
        self.inputs
            .iter()
            .find_map(|(_, t)| crate::dtype_of(*t))
            .unwrap_or(Dtype::F32)
    }

    fn err(&self, message: impl std::fmt::Display) -> ExecutorError {
        ExecutorError::Run {
            component: self.component,
            message: message.to_string(),
        }
    }

    /// A float tensor in the dtype the graph declares for `name`.
    fn float_value(
        &self,
        name: &str,
        shape: &[usize],
        data: &[f32],
    ) -> Result<DynValue, ExecutorError> {
        let shape: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        let value = match self.input_type(name) {
            Some(TensorElementType::Float16) => {
                let v: Vec<f16> = data.iter().map(|&x| f16::from_f32(x)).collect();
                ort::value::Tensor::from_array((shape, v)).map(|t| t.into_dyn())
            }
            _ => ort::value::Tensor::from_array((shape, data.to_vec())).map(|t| t.into_dyn()),
        };
        value.map_err(|e| self.err(e))
    }

    fn run(&self, inputs: Vec<(&str, DynValue)>) -> Result<Tensor, ExecutorError> {
        let mut session = self
            .session
            .lock()
            .map_err(|_| self.err("session lock poisoned by an earlier panic"))?;
        let named: Vec<(
            std::borrow::Cow<'_, str>,
            ort::session::SessionInputValue<'_>,
        )> = inputs
            .into_iter()
            .map(|(n, v)| (std::borrow::Cow::Borrowed(n), v.into()))
            .collect();
        let outputs = session.run(named).map_err(|e| self.err(e))?;
        let value = outputs
            .get(&self.output)
            .ok_or_else(|| ExecutorError::BadOutput {
                component: self.component,
                message: format!("no output named {}", self.output),
            })?;
        let bad = |message: String| ExecutorError::BadOutput {
            component: self.component,
            message,
        };
        let (shape, data) = match value.dtype().tensor_type() {
            Some(TensorElementType::Float16) => {
                let (shape, data) = value
                    .try_extract_tensor::<f16>()
                    .map_err(|e| bad(e.to_string()))?;
                (shape.to_vec(), data.iter().map(|x| x.to_f32()).collect())
            }
            _ => {
                let (shape, data) = value
                    .try_extract_tensor::<f32>()
                    .map_err(|e| bad(e.to_string()))?;
                (shape.to_vec(), data.to_vec())
            }
        };
        let shape = shape.iter().map(|&d| d.max(0) as usize).collect();
        Ok(Tensor::new(shape, data)?)
    }

    pub(crate) fn encode_text(&self, ids: &TokenIds) -> Result<Tensor, ExecutorError> {
        let shape = vec![ids.batch as i64, ids.len as i64];
        let value = match self.input_type("input_ids") {
            Some(TensorElementType::Int32) => {
                let v: Vec<i32> = ids.ids.iter().map(|&i| i as i32).collect();
                ort::value::Tensor::from_array((shape, v)).map(|t| t.into_dyn())
            }
            _ => ort::value::Tensor::from_array((shape, ids.ids.clone())).map(|t| t.into_dyn()),
        }
        .map_err(|e| self.err(e))?;
        self.run(vec![("input_ids", value)])
    }

    pub(crate) fn unet(&self, input: UnetInput<'_>) -> Result<Tensor, ExecutorError> {
        let sample = self.float_value("sample", input.sample.shape(), input.sample.data())?;
        let hidden = self.float_value(
            "encoder_hidden_states",
            input.encoder_hidden_states.shape(),
            input.encoder_hidden_states.data(),
        )?;
        // One timestep for the whole batch; the graph broadcasts it.
        let shape: &[usize] = if self.timestep_rank == 0 { &[] } else { &[1] };
        let timestep = match self.input_type("timestep") {
            Some(TensorElementType::Int64) => {
                let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
                ort::value::Tensor::from_array((dims, vec![input.timestep.round() as i64]))
                    .map(|t| t.into_dyn())
                    .map_err(|e| self.err(e))?
            }
            _ => self.float_value("timestep", shape, &[input.timestep])?,
        };
        self.run(vec![
            ("sample", sample),
            ("timestep", timestep),
            ("encoder_hidden_states", hidden),
        ])
    }

    /// Components with one float input (the VAE halves).
    pub(crate) fn single(&self, x: &Tensor) -> Result<Tensor, ExecutorError> {
        let name = match self.component {
            Component::VaeDecoder => "latent_sample",
            _ => "sample",
        };
        let value = self.float_value(name, x.shape(), x.data())?;
        self.run(vec![(name, value)])
    }
}
