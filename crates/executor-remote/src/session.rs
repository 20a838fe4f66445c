//! A batch's denoising loop on the sidecar.
//!
//! The conditioning goes to the sidecar once per chunk of rows (one chunk for
//! dynamic shapes; one per compiled UNet batch for static ones, padded like
//! every other static call) and stays there under a session id; a step sends
//! only each chunk's latents and timesteps. A host copy of the conditioning is
//! kept: [`DenoiseSession::select`] (rows leaving the batch, which is rare)
//! ends the sessions and begins new ones from it, and a session the sidecar
//! lost (evicted, or the sidecar restarted between steps) is begun again from
//! it, since a step depends only on the conditioning and the latents.

use anyaccel_executor::{
    Component, Conditioning, DenoiseSession, ExecutorError, Tensor, TimestepInput, shared_timestep,
};

use crate::batching::{self, Chunk};
use crate::{RemoteExecutor, assemble, from_proto, proto, to_proto};

/// One sidecar session: the rows `chunk` of the conditioning.
struct Part {
    chunk: Chunk,
    /// The sidecar's id, and the generation (process) that holds it.
    session: Option<(u64, u64)>,
}

pub(crate) struct RemoteSession<'a> {
    exec: &'a RemoteExecutor,
    component: Component,
    conditioning: Conditioning,
    parts: Vec<Part>,
}

impl<'a> RemoteSession<'a> {
    pub fn begin(
        exec: &'a RemoteExecutor,
        component: Component,
        conditioning: Conditioning,
    ) -> Result<Self, ExecutorError> {
        conditioning.check()?;
        let mut s = Self {
            exec,
            component,
            conditioning,
            parts: Vec::new(),
        };
        s.begin_parts()?;
        Ok(s)
    }

    /// Plans the chunks of the current conditioning and begins a sidecar
    /// session for each (on failure, `Drop` ends those already begun).
    fn begin_parts(&mut self) -> Result<(), ExecutorError> {
        let rows = self.conditioning.rows();
        if rows == 0 {
            return Ok(());
        }
        for chunk in batching::plan(rows, self.exec.batch(self.component)) {
            self.parts.push(Part {
                chunk,
                session: None,
            });
            let last = self.parts.len() - 1;
            self.begin_part(last)?;
        }
        Ok(())
    }

    fn begin_part(&mut self, i: usize) -> Result<(), ExecutorError> {
        let chunk = self.parts[i].chunk;
        let take = |t: &Tensor| batching::take(t, chunk).map(|t| to_proto(&t));
        let c = &self.conditioning;
        let req = proto::BeginDenoiseRequest {
            conditioning: Some(proto::Conditioning {
                encoder_hidden_states: Some(take(&c.encoder_hidden_states)?),
                pooled: c.pooled.as_ref().map(take).transpose()?,
                time_ids: c.time_ids.as_ref().map(take).transpose()?,
                guidance: c.guidance.as_ref().map(take).transpose()?,
                // Shared by every row: sent whole to each chunk.
                txt_ids: c.positions.as_ref().map(|p| to_proto(&p.txt_ids)),
                img_ids: c.positions.as_ref().map(|p| to_proto(&p.img_ids)),
            }),
        };
        let (resp, generation) = self
            .exec
            .call_on(self.component, |mut client| async move {
                client.begin_denoise(req).await
            })
            .map_err(|e| e.error)?;
        self.parts[i].session = Some((generation, resp.session));
        Ok(())
    }

    fn end_parts(&mut self) {
        let sessions: Vec<(u64, u64)> = self.parts.drain(..).filter_map(|p| p.session).collect();
        self.exec.end_sessions(sessions);
    }

    /// One chunk's step; begins its session again once if the sidecar lost it.
    fn step_part(
        &mut self,
        i: usize,
        sample: &proto::Tensor,
        timesteps: &[f32],
    ) -> Result<Tensor, ExecutorError> {
        let mut retried = false;
        loop {
            let current = self.exec.generation();
            let session = match self.parts[i].session {
                Some((generation, id)) if generation == current => id,
                stale => {
                    if retried {
                        return Err(ExecutorError::Unavailable(
                            "the sidecar restarted while the denoise session was being set up again"
                                .into(),
                        ));
                    }
                    if stale.is_some() {
                        tracing::warn!(
                            "the sidecar restarted during a denoise session; sending its conditioning again"
                        );
                    }
                    self.begin_part(i)?;
                    retried = true;
                    continue;
                }
            };
            let req = proto::DenoiseStepRequest {
                session,
                sample: Some(sample.clone()),
                timesteps: timesteps.to_vec(),
            };
            match self.exec.call_on(self.component, |mut client| async move {
                client.denoise_step(req).await
            }) {
                Ok((resp, _)) => return from_proto(self.component, resp.output),
                Err(e) if e.code == Some(tonic::Code::NotFound) && !retried => {
                    tracing::warn!(
                        session,
                        "the sidecar no longer holds the denoise session; sending its conditioning again"
                    );
                    self.parts[i].session = None;
                    self.begin_part(i)?;
                    retried = true;
                }
                Err(e) => return Err(e.error),
            }
        }
    }
}

impl DenoiseSession for RemoteSession<'_> {
    fn rows(&self) -> usize {
        self.conditioning.rows()
    }

    fn select(&mut self, rows: &[usize]) -> Result<(), ExecutorError> {
        let n = self.conditioning.rows();
        if rows.len() == n && rows.iter().enumerate().all(|(i, &r)| i == r) {
            return Ok(());
        }
        if let Some(&bad) = rows.iter().find(|&&r| r >= n) {
            return Err(ExecutorError::Invalid {
                component: Some(self.component),
                message: format!("row {bad} selected from a session of {n} rows"),
            });
        }
        self.conditioning = self.conditioning.select(rows)?;
        self.end_parts();
        self.begin_parts()
    }

    fn step(&mut self, sample: &Tensor, timesteps: &[f32]) -> Result<Tensor, ExecutorError> {
        let rows = self.conditioning.rows();
        if sample.batch() != rows || timesteps.len() != rows || sample.shape().len() != 4 {
            return Err(ExecutorError::Invalid {
                component: Some(self.component),
                message: format!(
                    "step got a sample of shape {:?} and {} timesteps for {rows} conditioning rows",
                    sample.shape(),
                    timesteps.len()
                ),
            });
        }
        if self.exec.capabilities.timestep == TimestepInput::Scalar {
            shared_timestep(self.component, timesteps)?;
        }
        if rows == 0 {
            return Ok(sample.clone());
        }
        let mut outs = Vec::with_capacity(self.parts.len());
        for i in 0..self.parts.len() {
            let chunk = self.parts[i].chunk;
            let part = to_proto(&batching::take(sample, chunk)?);
            let ts = batching::take_values(timesteps, chunk);
            outs.push((chunk, self.step_part(i, &part, &ts)?));
        }
        let out = assemble(self.component, outs)?;
        if out.shape() != sample.shape() {
            return Err(ExecutorError::BadOutput {
                component: self.component,
                message: format!(
                    "sent a sample of shape {:?}, got {:?} back",
                    sample.shape(),
                    out.shape()
                ),
            });
        }
        Ok(out)
    }
}

impl Drop for RemoteSession<'_> {
    fn drop(&mut self) {
        self.end_parts();
    }
}
