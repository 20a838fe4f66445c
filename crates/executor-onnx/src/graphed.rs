//! The denoising loop in fixed buffers, for CUDA graphs. ONNX Runtime can
//! capture a run as a CUDA graph and replay it, launching the whole UNet at
//! once instead of its ~1,000 kernels one by one; a captured graph has the
//! addresses of its inputs and output baked in. So each input shape (rows ×
//! latent size × text length) gets its own graph id and buffers that live as
//! long as the executor, and every step writes into them.
//!
//! The same code runs on the CPU, where ONNX Runtime has no graphs to capture:
//! that is how its buffer handling is tested without a GPU.

use std::sync::Mutex;

use anyaccel_executor::{Conditioning, DenoiseSession, ExecutorError, Tensor, check_step};
use ort::session::{IoBinding, RunOptions};
use ort::value::{DynTensor, DynTensorValueType, DynValue, TensorElementType};

use crate::device::Placement;
use crate::session::ComponentSession;

/// The buffers of every shape captured so far.
pub(crate) struct GraphPool {
    placement: Placement,
    max_shapes: usize,
    slots: Mutex<Slots>,
}

#[derive(Default)]
struct Slots {
    list: Vec<Slot>,
    /// Hands out [`GraphedSession::ticket`]s.
    next_ticket: u64,
}

/// One input shape's buffers and graph id.
struct Slot {
    /// Name, dtype and shape of every input, in binding order.
    key: Vec<InputKey>,
    inputs: Vec<DynTensor>,
    output: DynTensor,
    binding: IoBinding,
    /// Selects this slot's graph (ids start at 1; 0 is ONNX Runtime's own).
    run_options: RunOptions,
    /// The session whose conditioning the buffers hold now.
    holder: Option<u64>,
}

/// An input's name, element type (`None`: not a tensor) and shape.
type InputKey = (&'static str, Option<TensorElementType>, Vec<i64>);

fn shape_of(value: &DynValue) -> Vec<i64> {
    value
        .dtype()
        .tensor_shape()
        .map(|s| s.iter().copied().collect())
        .unwrap_or_default()
}

fn key_of<'v>(values: impl Iterator<Item = &'v (&'static str, DynValue)>) -> Vec<InputKey> {
    values
        .map(|(name, v)| (*name, v.dtype().tensor_type(), shape_of(v)))
        .collect()
}

impl GraphPool {
    pub(crate) fn new(placement: Placement, max_shapes: usize) -> Self {
        Self {
            placement,
            max_shapes,
            slots: Mutex::new(Slots::default()),
        }
    }

    pub(crate) fn max_shapes(&self) -> usize {
        self.max_shapes
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Slots>, ExecutorError> {
        self.slots.lock().map_err(|_| {
            ExecutorError::Unavailable("the CUDA graph buffers were poisoned by a panic".into())
        })
    }

    /// Where each shape's input buffers are, in order of capture: a graph
    /// replays correctly only while these stay put.
    #[cfg(test)]
    pub(crate) fn addresses(&self) -> Vec<Vec<usize>> {
        let slots = self.slots.lock().expect("not poisoned");
        slots
            .list
            .iter()
            .map(|s| {
                let mut a: Vec<usize> = s.inputs.iter().map(|t| t.data_ptr() as usize).collect();
                a.push(s.output.data_ptr() as usize);
                a
            })
            .collect()
    }

    /// A new slot for the inputs `key` describes, bound to fresh buffers.
    fn slot(
        &self,
        denoiser: &ComponentSession,
        key: Vec<InputKey>,
        id: usize,
    ) -> Result<Slot, ExecutorError> {
        let err = |e: ort::Error| ExecutorError::Run {
            component: denoiser.component(),
            message: format!("CUDA graph buffers: {e}"),
        };
        let mut binding = denoiser.create_binding()?;
        let mut inputs = Vec::with_capacity(key.len());
        for (name, dtype, shape) in &key {
            let dtype = dtype.ok_or_else(|| ExecutorError::Run {
                component: denoiser.component(),
                message: format!("`{name}` is not a tensor"),
            })?;
            let buffer = denoiser.allocate(self.placement, dtype, shape)?;
            binding.bind_input(*name, &buffer).map_err(err)?;
            inputs.push(buffer);
        }
        // The output has the latents' shape (UNets and DiTs predict noise or
        // velocity of the same shape).
        let (_, _, shape) = key
            .iter()
            .find(|(name, ..)| *name == denoiser.latent_input())
            .ok_or_else(|| ExecutorError::Run {
                component: denoiser.component(),
                message: "no latent input".into(),
            })?;
        let mut output = denoiser.allocate(self.placement, denoiser.output_type(), shape)?;
        binding
            .bind_output(denoiser.output_name(), &mut output)
            .map_err(err)?;
        let mut run_options = RunOptions::new().map_err(err)?;
        run_options
            .set("gpu_graph_id", id.to_string())
            .map_err(err)?;
        Ok(Slot {
            key,
            inputs,
            output,
            binding,
            run_options,
            holder: None,
        })
    }
}

/// Writes host values into a slot's buffers (same dtypes and shapes).
fn upload(
    denoiser: &ComponentSession,
    values: &[(&'static str, DynValue)],
    buffers: &mut [DynTensor],
) -> Result<(), ExecutorError> {
    for ((name, value), buffer) in values.iter().zip(buffers) {
        value
            .view()
            .downcast::<DynTensorValueType>()
            .and_then(|v| v.copy_into(&mut *buffer))
            .map_err(|e| ExecutorError::Run {
                component: denoiser.component(),
                message: format!("copying `{name}` into its CUDA graph buffer: {e}"),
            })?;
    }
    Ok(())
}

pub(crate) struct GraphedSession<'a> {
    denoiser: &'a ComponentSession,
    pool: &'a GraphPool,
    /// Kept to select rows from when some leave the batch.
    conditioning: Conditioning,
    /// The conditioning as the graph takes it (dtype-converted once).
    values: Vec<(&'static str, DynValue)>,
    /// Tells this session's conditioning apart in the shared buffers.
    ticket: u64,
}

impl<'a> GraphedSession<'a> {
    pub(crate) fn new(
        denoiser: &'a ComponentSession,
        pool: &'a GraphPool,
        conditioning: Conditioning,
    ) -> Result<Self, ExecutorError> {
        conditioning.check()?;
        let values = denoiser.conditioning_values(&conditioning)?;
        let ticket = {
            let mut slots = pool.lock()?;
            slots.next_ticket += 1;
            slots.next_ticket
        };
        Ok(Self {
            denoiser,
            pool,
            conditioning,
            values,
            ticket,
        })
    }
}

impl DenoiseSession for GraphedSession<'_> {
    fn rows(&self) -> usize {
        self.conditioning.rows()
    }

    fn select(&mut self, rows: &[usize]) -> Result<(), ExecutorError> {
        let kept = self.conditioning.select(rows)?;
        self.values = self.denoiser.conditioning_values(&kept)?;
        self.conditioning = kept;
        // A new conditioning under the same ticket must not pass for the old.
        self.ticket = {
            let mut slots = self.pool.lock()?;
            slots.next_ticket += 1;
            slots.next_ticket
        };
        Ok(())
    }

    fn step(&mut self, sample: &Tensor, timesteps: &[f32]) -> Result<Tensor, ExecutorError> {
        check_step(self.conditioning.rows(), sample, timesteps)?;
        let step = self.denoiser.step_values(sample, timesteps)?;
        let key = key_of(self.values.iter().chain(&step));
        let mut slots = self.pool.lock()?;
        let index = match slots.list.iter().position(|s| s.key == key) {
            Some(i) => i,
            None if slots.list.len() < self.pool.max_shapes => {
                let id = slots.list.len() + 1;
                tracing::debug!(graph_id = id, shape = ?key, "new CUDA graph shape");
                let slot = self.pool.slot(self.denoiser, key, id)?;
                slots.list.push(slot);
                id - 1
            }
            // Past the cap a shape runs uncaptured, as the bound loop does.
            None => {
                drop(slots);
                return self.denoiser.run_uncaptured(&self.values, step);
            }
        };
        let slot = &mut slots.list[index];
        let (conditioning, latents) = slot.inputs.split_at_mut(self.values.len());
        if slot.holder != Some(self.ticket) {
            upload(self.denoiser, &self.values, conditioning)?;
            slot.holder = Some(self.ticket);
        }
        upload(self.denoiser, &step, latents)?;
        self.denoiser.run_graph(&slot.binding, &slot.run_options)?;
        self.denoiser.read_output(&slot.output, self.pool.placement)
    }
}
