//! The denoising loop with I/O binding: a batch's conditioning is bound to
//! the denoiser once, on the GPU when the executor runs there, and each step
//! moves only the latents in and the model output out (one copy each way).

use anyaccel_executor::{Conditioning, DenoiseSession, ExecutorError, Tensor, check_step};
use ort::session::IoBinding;

use crate::device::Placement;
use crate::session::ComponentSession;

pub(crate) struct BoundSession<'a> {
    denoiser: &'a ComponentSession,
    /// The host copy, to rebind from when rows leave the batch.
    conditioning: Conditioning,
    binding: IoBinding,
    placement: Placement,
}

impl<'a> BoundSession<'a> {
    pub(crate) fn new(
        denoiser: &'a ComponentSession,
        conditioning: Conditioning,
        placement: Placement,
    ) -> Result<Self, ExecutorError> {
        let binding = denoiser.bind(&conditioning, placement)?;
        Ok(Self {
            denoiser,
            conditioning,
            binding,
            placement,
        })
    }
}

impl DenoiseSession for BoundSession<'_> {
    fn rows(&self) -> usize {
        self.conditioning.rows()
    }

    fn select(&mut self, rows: &[usize]) -> Result<(), ExecutorError> {
        let kept = self.conditioning.select(rows)?;
        // A cancelled image is rare; one more upload then is cheaper than
        // gathering rows on the device every time.
        self.binding = self.denoiser.bind(&kept, self.placement)?;
        self.conditioning = kept;
        Ok(())
    }

    fn step(&mut self, sample: &Tensor, timesteps: &[f32]) -> Result<Tensor, ExecutorError> {
        check_step(self.conditioning.rows(), sample, timesteps)?;
        self.denoiser
            .run_bound(&mut self.binding, sample, timesteps)
    }
}
