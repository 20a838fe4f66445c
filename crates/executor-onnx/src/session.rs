//! One ONNX Runtime session per model component, adapting our f32 host
//! tensors to whatever input names and dtypes the exported graph declares.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyaccel_executor::{
    Component, Conditioning, Dtype, ExecutorError, HiddenLayer, Positions, Tensor, TextEncoding,
    TimestepInput, TokenIds,
};
use half::f16;
use ort::ep::{self, ExecutionProvider};
use ort::memory::Allocator;
use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{IoBinding, RunOptions, Session, SessionInputValue};
use ort::value::{
    DynTensor, DynTensorValueType, DynValue, TensorElementType, TensorValueTypeMarker, Value,
    ValueType,
};

use crate::device::{ArenaStrategy, ConvSearch, CudaOptions, Device, Placement, Provider};
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
    /// Rank the graph declares for `timestep`: 0 (a scalar), or 1 (`[1]` or `[batch]`).
    timestep_rank: usize,
    /// Whether `timestep` takes one value per row (a dynamic `[batch]` axis).
    per_sample_timesteps: bool,
    /// Output names, in the graph's order.
    outputs: Vec<String>,
    /// Element type of the first output.
    output_type: TensorElementType,
    /// Options of every run outside a captured CUDA graph. A session that
    /// captures graphs would capture its default graph on a run without a
    /// graph id, so there they name none (-1).
    run_options: RunOptions,
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

/// The CUDA execution provider on GPU `index`, as `options` say, capturing
/// CUDA graphs if `graphs`.
fn cuda(index: u32, options: &CudaOptions, graphs: bool) -> ep::CUDA {
    let search = match options.conv_search {
        ConvSearch::Exhaustive => ep::cuda::ConvAlgorithmSearch::Exhaustive,
        ConvSearch::Heuristic => ep::cuda::ConvAlgorithmSearch::Heuristic,
        ConvSearch::Default => ep::cuda::ConvAlgorithmSearch::Default,
    };
    let arena = match options.arena {
        ArenaStrategy::SameAsRequested => ep::ArenaExtendStrategy::SameAsRequested,
        ArenaStrategy::NextPowerOfTwo => ep::ArenaExtendStrategy::NextPowerOfTwo,
    };
    let provider = ep::CUDA::default()
        .with_device_id(index as i32)
        .with_conv_algorithm_search(search)
        .with_conv_max_workspace(options.conv_max_workspace)
        .with_arena_extend_strategy(arena)
        .with_prefer_nhwc(options.prefer_nhwc)
        .with_cuda_graph(graphs);
    match options.memory_limit {
        Some(bytes) => provider.with_memory_limit(usize::try_from(bytes).unwrap_or(usize::MAX)),
        None => provider,
    }
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
        // Only the denoiser runs step after step at the same shapes.
        let graphs = component.is_denoiser()
            && matches!(config.binding, crate::Binding::CudaGraphs { .. })
            && matches!(device.provider, Provider::Cuda(_));
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
            Provider::Cuda(index) => {
                cuda(index, &config.cuda, graphs)
                    .register(&mut builder)
                    .map_err(|e| {
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
        let timestep_shape = shapes
            .iter()
            .find(|(n, _)| n == "timestep")
            .map(|(_, s)| s.clone());
        let timestep_rank = timestep_shape.as_ref().map_or(1, Vec::len);
        // A fixed `[1]` broadcasts one value; a dynamic first axis takes one per row.
        let per_sample_timesteps = timestep_shape
            .as_deref()
            .is_some_and(|s| s.len() == 1 && s[0] != 1);
        let outputs: Vec<String> = session
            .outputs()
            .iter()
            .map(|o| o.name().to_string())
            .collect();
        if outputs.is_empty() {
            return Err(load("the graph declares no outputs".into()));
        }
        let output_type = session
            .outputs()
            .first()
            .and_then(|o| element_type(o.dtype()))
            .unwrap_or(TensorElementType::Float32);
        let mut run_options = RunOptions::new().map_err(|e| load(e.to_string()))?;
        if graphs {
            run_options
                .set("gpu_graph_id", "-1")
                .map_err(|e| load(e.to_string()))?;
        }
        let this = Self {
            component,
            session: Mutex::new(session),
            inputs,
            shapes,
            timestep_rank,
            per_sample_timesteps,
            outputs,
            output_type,
            run_options,
        };
        this.check_signature(path)?;
        tracing::debug!(%component, inputs = ?this.inputs, outputs = ?this.outputs, "session ready");
        Ok(this)
    }

    fn check_signature(&self, path: &Path) -> Result<(), OnnxError> {
        let required: &[&str] = match self.component {
            Component::TextEncoder | Component::TextEncoder2 | Component::TextEncoder3 => {
                &["input_ids"]
            }
            Component::Unet => &["sample", "timestep", "encoder_hidden_states"],
            Component::Transformer => &["hidden_states", "timestep", "encoder_hidden_states"],
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
            Component::TextEncoder | Component::TextEncoder2 | Component::TextEncoder3 => {
                let shape = dims("input_ids", &[1, 77]);
                let ids = TokenIds {
                    batch: shape[0],
                    len: shape[1],
                    ids: vec![0; shape[0] * shape[1]],
                };
                self.encode_text(&ids, HiddenLayer::Last)?;
            }
            Component::Unet | Component::Transformer => {
                let packed = self
                    .shapes
                    .iter()
                    .any(|(n, s)| n == self.latent_input() && s.len() == 3);
                // Flux takes 2×2 patches as tokens, `[rows, tokens, channels * 4]`.
                let fallback: &[usize] = if packed { &[1, 16, 64] } else { &[1, 4, 8, 8] };
                let sample = dims(self.latent_input(), fallback);
                let rows = sample[0];
                let mut text = dims("encoder_hidden_states", &[rows, 77, 768]);
                text[0] = rows;
                let extra = |name: &str, fallback: usize| {
                    self.input_type(name).map(|_| {
                        let mut d = dims(name, &[rows, fallback]);
                        d[0] = rows;
                        Tensor::zeros(d)
                    })
                };
                let pooled = ["text_embeds", "pooled_projections"]
                    .into_iter()
                    .find_map(|n| extra(n, 1280));
                let positions = match (self.input_type("txt_ids"), self.input_type("img_ids")) {
                    (Some(_), Some(_)) => Some(Positions {
                        txt_ids: Tensor::zeros(vec![text[1], 3]),
                        img_ids: Tensor::zeros(vec![sample[1], 3]),
                    }),
                    _ => None,
                };
                let conditioning = Conditioning {
                    encoder_hidden_states: Tensor::zeros(text),
                    pooled,
                    time_ids: extra("time_ids", 6),
                    guidance: self
                        .input_type("guidance")
                        .map(|_| Tensor::zeros(vec![rows])),
                    positions,
                };
                self.denoise(&conditioning, &Tensor::zeros(sample), &vec![0.5; rows])?;
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

    /// The denoiser's latent input: diffusers names it `sample` in UNets and
    /// `hidden_states` in DiTs.
    pub(crate) fn latent_input(&self) -> &'static str {
        if self.component == Component::Transformer {
            "hidden_states"
        } else {
            "sample"
        }
    }

    /// How the denoiser graph takes its timestep.
    pub(crate) fn timestep_input(&self) -> TimestepInput {
        if self.per_sample_timesteps {
            TimestepInput::PerSample
        } else {
            TimestepInput::Scalar
        }
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

    /// A panic while running left the session in an unknown state.
    pub(crate) fn is_poisoned(&self) -> bool {
        self.session.is_poisoned()
    }

    /// Poisons the session as a panic inside a run would.
    #[cfg(test)]
    pub(crate) fn poison(&self) {
        std::thread::scope(|s| {
            let _ = s
                .spawn(|| {
                    let _held = self.session.lock();
                    panic!("poisoning the session for a test");
                })
                .join();
        });
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
            // Flux's position ids are int64 in optimum's export (whole numbers).
            Some(TensorElementType::Int64) => {
                let v: Vec<i64> = data.iter().map(|&x| x.round() as i64).collect();
                ort::value::Tensor::from_array((shape, v)).map(|t| t.into_dyn())
            }
            _ => ort::value::Tensor::from_array((shape, data.to_vec())).map(|t| t.into_dyn()),
        };
        value.map_err(|e| self.err(e))
    }

    /// Runs the graph and returns the outputs named `wanted`, in that order.
    fn run<'v>(
        &self,
        inputs: Vec<(&str, SessionInputValue<'v>)>,
        wanted: &[&str],
    ) -> Result<Vec<Tensor>, ExecutorError> {
        let mut session = self.lock()?;
        let named: Vec<(std::borrow::Cow<'_, str>, SessionInputValue<'v>)> = inputs
            .into_iter()
            .map(|(n, v)| (std::borrow::Cow::Borrowed(n), v))
            .collect();
        let outputs = session
            .run_with_options(named, &self.run_options)
            .map_err(|e| self.err(e))?;
        let mut out = Vec::with_capacity(wanted.len());
        for name in wanted {
            let value = outputs.get(name).ok_or_else(|| ExecutorError::BadOutput {
                component: self.component,
                message: format!("no output named {name}"),
            })?;
            out.push(self.host_tensor(value)?);
        }
        Ok(out)
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Session>, ExecutorError> {
        self.session.lock().map_err(|_| {
            ExecutorError::Unavailable(format!(
                "{}: the session was poisoned by an earlier panic",
                self.component
            ))
        })
    }

    /// A host-memory float output as an f32 tensor.
    fn host_tensor<T: TensorValueTypeMarker + ?Sized>(
        &self,
        value: &Value<T>,
    ) -> Result<Tensor, ExecutorError> {
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

    /// The first output (the only one the denoiser and VAE halves have).
    fn run_one(&self, inputs: Vec<(&str, SessionInputValue<'_>)>) -> Result<Tensor, ExecutorError> {
        let first = self.outputs[0].clone();
        let mut out = self.run(inputs, &[&first])?;
        out.pop().ok_or_else(|| ExecutorError::BadOutput {
            component: self.component,
            message: "no output".into(),
        })
    }

    /// The output holding the requested hidden layer. optimum exports every
    /// layer as `hidden_states.{i}` (i = 0 is the embeddings) when the
    /// pipeline needs one other than the last.
    fn hidden_output(&self, layer: HiddenLayer) -> Result<String, ExecutorError> {
        let last = self
            .outputs
            .iter()
            .find(|n| *n == "last_hidden_state")
            .unwrap_or(&self.outputs[0])
            .clone();
        match layer {
            HiddenLayer::Last => Ok(last),
            HiddenLayer::Penultimate => {
                let deepest = self
                    .outputs
                    .iter()
                    .filter_map(|n| n.strip_prefix("hidden_states.")?.parse::<usize>().ok())
                    .max();
                match deepest {
                    Some(n) if n >= 1 => Ok(format!("hidden_states.{}", n - 1)),
                    _ => Err(ExecutorError::Missing {
                        component: self.component,
                        reason: "the model needs the penultimate hidden layer, but the graph \
                                 exports no `hidden_states.N` outputs (export it with optimum \
                                 or `anyaccel compile`, which keep them)"
                            .into(),
                    }),
                }
            }
        }
    }

    pub(crate) fn encode_text(
        &self,
        ids: &TokenIds,
        layer: HiddenLayer,
    ) -> Result<TextEncoding, ExecutorError> {
        let shape = vec![ids.batch as i64, ids.len as i64];
        let value = match self.input_type("input_ids") {
            Some(TensorElementType::Int32) => {
                let v: Vec<i32> = ids.ids.iter().map(|&i| i as i32).collect();
                ort::value::Tensor::from_array((shape, v)).map(|t| t.into_dyn())
            }
            _ => ort::value::Tensor::from_array((shape, ids.ids.clone())).map(|t| t.into_dyn()),
        }
        .map_err(|e| self.err(e))?;
        let hidden = self.hidden_output(layer)?;
        // CLIPTextModelWithProjection exports `text_embeds`, CLIPTextModel `pooler_output`.
        let pooled = ["text_embeds", "pooler_output"]
            .into_iter()
            .find(|n| self.outputs.iter().any(|o| o == n));
        let mut wanted = vec![hidden.as_str()];
        wanted.extend(pooled);
        let mut out = self
            .run(vec![("input_ids", value.into())], &wanted)?
            .into_iter();
        let hidden = out.next().ok_or_else(|| self.err("no hidden state"))?;
        Ok(TextEncoding {
            hidden,
            pooled: out.next(),
        })
    }

    /// One denoiser evaluation with the batch's conditioning, all inputs
    /// handed over for this run alone.
    pub(crate) fn denoise(
        &self,
        conditioning: &Conditioning,
        sample: &Tensor,
        timesteps: &[f32],
    ) -> Result<Tensor, ExecutorError> {
        let inputs = self.conditioning_values(conditioning)?;
        self.run_uncaptured(&inputs, self.step_values(sample, timesteps)?)
    }

    /// One denoiser evaluation from inputs already in the graph's dtypes.
    pub(crate) fn run_uncaptured(
        &self,
        conditioning: &[(&'static str, DynValue)],
        step: Vec<(&'static str, DynValue)>,
    ) -> Result<Tensor, ExecutorError> {
        let inputs = conditioning
            .iter()
            .map(|(n, v)| (*n, SessionInputValue::from(v)))
            .chain(step.into_iter().map(|(n, v)| (n, v.into())))
            .collect();
        self.run_one(inputs)
    }

    /// The denoiser's inputs that stay the same for a whole batch.
    pub(crate) fn conditioning_values(
        &self,
        conditioning: &Conditioning,
    ) -> Result<Vec<(&'static str, DynValue)>, ExecutorError> {
        let mut inputs = vec![(
            "encoder_hidden_states",
            self.float_value(
                "encoder_hidden_states",
                conditioning.encoder_hidden_states.shape(),
                conditioning.encoder_hidden_states.data(),
            )?,
        )];
        // UNets name the pooled text `text_embeds`, DiTs `pooled_projections`.
        let pooled = if self.component == Component::Transformer {
            "pooled_projections"
        } else {
            "text_embeds"
        };
        let positions = conditioning.positions.as_ref();
        for (name, part) in [
            (pooled, conditioning.pooled.as_ref()),
            ("time_ids", conditioning.time_ids.as_ref()),
            ("guidance", conditioning.guidance.as_ref()),
            ("txt_ids", positions.map(|p| &p.txt_ids)),
            ("img_ids", positions.map(|p| &p.img_ids)),
        ] {
            match (self.input_type(name).is_some(), part) {
                (true, Some(t)) => {
                    inputs.push((name, self.float_value(name, t.shape(), t.data())?))
                }
                (true, None) => {
                    return Err(ExecutorError::Invalid {
                        component: Some(self.component),
                        message: format!("the graph takes `{name}` but the conditioning has none"),
                    });
                }
                // A graph without the input (SD 1.x/2.x, Flux schnell's without
                // `guidance`): the family sends none, or it has no effect there.
                (false, _) => {}
            }
        }
        Ok(inputs)
    }

    /// The denoiser's inputs that change every step: latents and timesteps.
    pub(crate) fn step_values(
        &self,
        sample: &Tensor,
        timesteps: &[f32],
    ) -> Result<Vec<(&'static str, DynValue)>, ExecutorError> {
        let latents = self.latent_input();
        let sample = self.float_value(latents, sample.shape(), sample.data())?;
        let values: Vec<f32> = if self.per_sample_timesteps {
            timesteps.to_vec()
        } else {
            vec![anyaccel_executor::shared_timestep(
                self.component,
                timesteps,
            )?]
        };
        let shape: Vec<usize> = if self.timestep_rank == 0 {
            Vec::new()
        } else {
            vec![values.len()]
        };
        let timestep = match self.input_type("timestep") {
            Some(TensorElementType::Int64) => {
                let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
                let v: Vec<i64> = values.iter().map(|t| t.round() as i64).collect();
                ort::value::Tensor::from_array((dims, v))
                    .map(|t| t.into_dyn())
                    .map_err(|e| self.err(e))?
            }
            _ => self.float_value("timestep", &shape, &values)?,
        };
        Ok(vec![(latents, sample), ("timestep", timestep)])
    }

    /// An I/O binding holding `conditioning` where `placement` says, for
    /// [`ComponentSession::run_bound`] to run steps with; the output is bound
    /// to host memory, so each step copies its result back once.
    pub(crate) fn bind(
        &self,
        conditioning: &Conditioning,
        placement: Placement,
    ) -> Result<IoBinding, ExecutorError> {
        conditioning.check()?;
        let values = self.conditioning_values(conditioning)?;
        let mut binding = self.lock()?.create_binding().map_err(|e| self.err(e))?;
        for (name, value) in values {
            let value = match placement {
                Placement::Host => value,
                Placement::Cuda(id) => value
                    .downcast::<DynTensorValueType>()
                    .and_then(|t| t.to(AllocationDevice::CUDA, id))
                    .map(|t| t.into_dyn())
                    .map_err(|e| self.err(format!("copying `{name}` to the GPU: {e}")))?,
            };
            binding.bind_input(name, &value).map_err(|e| self.err(e))?;
        }
        let host = MemoryInfo::new(
            AllocationDevice::CPU,
            0,
            AllocatorType::Device,
            MemoryType::Default,
        )
        .map_err(|e| self.err(e))?;
        binding
            .bind_output_to_device(self.outputs[0].as_str(), &host)
            .map_err(|e| self.err(e))?;
        Ok(binding)
    }

    /// One denoiser step on a binding made by [`ComponentSession::bind`].
    pub(crate) fn run_bound(
        &self,
        binding: &mut IoBinding,
        sample: &Tensor,
        timesteps: &[f32],
    ) -> Result<Tensor, ExecutorError> {
        for (name, value) in self.step_values(sample, timesteps)? {
            binding.bind_input(name, &value).map_err(|e| self.err(e))?;
        }
        let mut session = self.lock()?;
        let outputs = session
            .run_binding_with_options(binding, &self.run_options)
            .map_err(|e| self.err(e))?;
        let name = self.outputs[0].as_str();
        let value = outputs.get(name).ok_or_else(|| ExecutorError::BadOutput {
            component: self.component,
            message: format!("no output named {name}"),
        })?;
        self.host_tensor(value)
    }

    /// Components with one float input (the VAE halves).
    pub(crate) fn single(&self, x: &Tensor) -> Result<Tensor, ExecutorError> {
        let name = match self.component {
            Component::VaeDecoder => "latent_sample",
            _ => "sample",
        };
        let value = self.float_value(name, x.shape(), x.data())?;
        self.run_one(vec![(name, value.into())])
    }

    pub(crate) fn component(&self) -> Component {
        self.component
    }

    pub(crate) fn output_name(&self) -> &str {
        &self.outputs[0]
    }

    pub(crate) fn output_type(&self) -> TensorElementType {
        self.output_type
    }

    pub(crate) fn create_binding(&self) -> Result<IoBinding, ExecutorError> {
        self.lock()?.create_binding().map_err(|e| self.err(e))
    }

    /// An uninitialised tensor where `placement` says, from the session's
    /// allocator for the GPU.
    pub(crate) fn allocate(
        &self,
        placement: Placement,
        dtype: TensorElementType,
        shape: &[i64],
    ) -> Result<DynTensor, ExecutorError> {
        let shape = shape.to_vec();
        let tensor = match placement {
            Placement::Host => DynTensor::new(&Allocator::default(), dtype, shape),
            Placement::Cuda(id) => {
                let session = self.lock()?;
                MemoryInfo::new(
                    AllocationDevice::CUDA,
                    id,
                    AllocatorType::Device,
                    MemoryType::Default,
                )
                .and_then(|info| Allocator::new(&session, info))
                .and_then(|alloc| DynTensor::new(&alloc, dtype, shape))
            }
        };
        tensor.map_err(|e| self.err(format!("allocating a buffer: {e}")))
    }

    /// One run of a binding whose inputs and output stay put, under the
    /// options that select its CUDA graph.
    pub(crate) fn run_graph(
        &self,
        binding: &IoBinding,
        options: &RunOptions,
    ) -> Result<(), ExecutorError> {
        let mut session = self.lock()?;
        session
            .run_binding_with_options(binding, options)
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// A buffer's contents as an f32 host tensor.
    pub(crate) fn read_output(
        &self,
        buffer: &DynTensor,
        placement: Placement,
    ) -> Result<Tensor, ExecutorError> {
        match placement {
            Placement::Host => self.host_tensor(buffer),
            Placement::Cuda(_) => {
                let host = buffer
                    .to(AllocationDevice::CPU, 0)
                    .map_err(|e| self.err(format!("copying the output to the host: {e}")))?;
                self.host_tensor(&host)
            }
        }
    }
}
