//! Checkpoints of a denoising run: where one request's images stand after
//! some steps, so another process (another replica) can finish the run and
//! get the same bytes as an uninterrupted one.
//!
//! What makes a run resumable bit for bit is everything the loop carries
//! from one step to the next: each image's latents, its scheduler history
//! ([`ItemState`]) and its noise generator's position ([`NoiseGenerator`],
//! which Euler a and LCM draw from every step). Text conditioning is not
//! stored: encoding the prompts again is deterministic.
//!
//! # Encoding (version 1)
//!
//! Little-endian throughout, no padding:
//!
//! | bytes | field |
//! |---|---|
//! | 8 | magic `ANYACKPT` |
//! | 2 | version (`u16`, 1) |
//! | 8 | total length of the encoding in bytes (`u64`, checksum included) |
//! | 1 | scheduler (`u8`: 0 euler, 1 euler_a, 2 ddim, 3 dpmpp_2m, 4 dpmpp_2m_karras, 5 lcm, 6 flow_match_euler) |
//! | 4 × 3 | width, height, the request's inference steps (`u32`) |
//! | 4 | steps done, relative to the request's first step (`u32`) |
//! | 4 | absolute schedule index of the next step (`u32`) |
//! | 4 | latent values per image (`u32`, `c·h·w`) |
//! | 4 | images (`u32`) |
//! | per image | seed (`u64`); noise index (`u32`) and the 624 Mersenne Twister words (`u32`); DPM++ `lower_order_nums` (`u8`); whether a previous x0 follows (`u8`, 0 or 1); latents (`f32` × latent values); previous x0 (`f32` × latent values, if present) |
//! | 4 | CRC-32 (IEEE) of every byte before it |
//!
//! The length and checksum come first in what [`Checkpoint::from_bytes`]
//! checks, so a cut-off or damaged checkpoint is refused as such rather
//! than resumed into a different image.

use crate::noise::{NoiseGenerator, STATE_WORDS};
use crate::scheduler::{ItemState, SchedulerKind};

const MAGIC: &[u8; 8] = b"ANYACKPT";
const VERSION: u16 = 1;
/// Magic, version and total length: enough to tell what the rest should be.
const PREAMBLE: usize = 8 + 2 + 8;
const HEADER: usize = PREAMBLE + 1 + 4 * 7;
const CRC_LEN: usize = 4;

/// Why bytes are not a checkpoint this build can resume.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error("not a checkpoint (it does not start with the checkpoint magic bytes)")]
    NotACheckpoint,
    #[error("checkpoint version {found} is not supported (this build reads version {supported})")]
    UnsupportedVersion { found: u16, supported: u16 },
    #[error("checkpoint is truncated: {got} of {expected} bytes")]
    Truncated { expected: u64, got: usize },
    #[error("checkpoint is corrupt: {0}")]
    Corrupt(String),
}

/// Where one request's images stand after some steps of its denoising loop:
/// each image's latents, scheduler state and noise-generator position.
///
/// Made by the pipeline ([`crate::Observer::on_checkpoint`],
/// [`crate::Outcome::Suspended`]) or read back with
/// [`Checkpoint::from_bytes`]; resumed with
/// [`crate::GenerationRequest::resume_from`].
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// The request it was taken from, so it resumes only the same run.
    pub(crate) scheduler: SchedulerKind,
    pub(crate) width: u32,
    pub(crate) height: u32,
    /// The request's inference steps: the schedule's length.
    pub(crate) steps: u32,
    pub(crate) steps_done: u32,
    /// Absolute schedule index the loop continues at (img2img starts past 0).
    pub(crate) next_index: u32,
    /// One per seed, in the request's seed order.
    pub(crate) images: Vec<ImageCheckpoint>,
}

/// One image's part of a [`Checkpoint`].
#[derive(Clone, PartialEq)]
pub(crate) struct ImageCheckpoint {
    pub(crate) seed: u64,
    pub(crate) latents: Vec<f32>,
    pub(crate) state: ItemState,
    pub(crate) noise: NoiseGenerator,
}

// Latents are thousands of floats: a log line needs their count, not them.
impl std::fmt::Debug for ImageCheckpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageCheckpoint")
            .field("seed", &self.seed)
            .field("latents", &self.latents.len())
            .field("prev_x0", &self.state.prev_x0().map(<[f32]>::len))
            .field("lower_order_nums", &self.state.lower_order_nums())
            .field("noise", &self.noise)
            .finish()
    }
}

impl Checkpoint {
    /// Denoising steps already done (relative to the request's first step,
    /// i.e. what [`crate::Observer::on_step`] reported).
    pub fn steps_done(&self) -> u32 {
        self.steps_done
    }

    /// Images it holds (one per seed of the request).
    pub fn images(&self) -> usize {
        self.images.len()
    }

    /// A compact, versioned little-endian binary encoding (see the module
    /// documentation for the layout).
    pub fn to_bytes(&self) -> Vec<u8> {
        let latent_len = self.latent_len();
        let len = self.encoded_len();
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(len as u64).to_le_bytes());
        out.push(scheduler_code(self.scheduler));
        for v in [
            self.width,
            self.height,
            self.steps,
            self.steps_done,
            self.next_index,
            latent_len as u32,
            self.images.len() as u32,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for img in &self.images {
            out.extend_from_slice(&img.seed.to_le_bytes());
            let (state, index) = img.noise.parts();
            out.extend_from_slice(&(index as u32).to_le_bytes());
            let at = out.len();
            out.resize(at + 4 * state.len(), 0);
            for (dst, w) in out[at..].chunks_exact_mut(4).zip(state) {
                dst.copy_from_slice(&w.to_le_bytes());
            }
            out.push(img.state.lower_order_nums() as u8);
            let prev = img.state.prev_x0();
            out.push(u8::from(prev.is_some()));
            put_f32s(&mut out, &img.latents);
            if let Some(prev) = prev {
                put_f32s(&mut out, prev);
            }
        }
        let crc = crc32(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        debug_assert_eq!(out.len(), len);
        out
    }

    /// Parses [`Checkpoint::to_bytes`] output; any truncation, corruption or
    /// unknown version is an error, never a panic.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CheckpointError> {
        let short = |expected: usize| CheckpointError::Truncated {
            expected: expected as u64,
            got: bytes.len(),
        };
        let magic_len = bytes.len().min(MAGIC.len());
        if bytes[..magic_len] != MAGIC[..magic_len] {
            return Err(CheckpointError::NotACheckpoint);
        }
        if bytes.len() < MAGIC.len() + 2 {
            return Err(short(PREAMBLE));
        }
        let version = u16::from_le_bytes([bytes[8], bytes[9]]);
        if version != VERSION {
            return Err(CheckpointError::UnsupportedVersion {
                found: version,
                supported: VERSION,
            });
        }
        if bytes.len() < PREAMBLE {
            return Err(short(PREAMBLE));
        }
        let mut len = [0u8; 8];
        len.copy_from_slice(&bytes[10..PREAMBLE]);
        let expected = u64::from_le_bytes(len);
        if expected > bytes.len() as u64 {
            return Err(CheckpointError::Truncated {
                expected,
                got: bytes.len(),
            });
        }
        if expected < bytes.len() as u64 {
            return Err(corrupt(format!(
                "{} bytes where its header says {expected}",
                bytes.len()
            )));
        }
        if bytes.len() < HEADER + CRC_LEN {
            return Err(corrupt("its length is shorter than a header"));
        }
        let (body, crc) = bytes.split_at(bytes.len() - CRC_LEN);
        let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
        if crc32(body) != stored {
            return Err(corrupt("checksum mismatch"));
        }
        // The checksum passed; the checks below catch what a buggy or hostile writer could still send.
        let mut r = Reader {
            bytes: body,
            at: PREAMBLE,
        };
        let code = r.u8()?;
        let scheduler = scheduler_from_code(code)
            .ok_or_else(|| corrupt(format!("unknown scheduler code {code}")))?;
        let width = r.u32()?;
        let height = r.u32()?;
        let steps = r.u32()?;
        let steps_done = r.u32()?;
        let next_index = r.u32()?;
        let latent_len = r.u32()? as usize;
        let count = r.u32()? as usize;
        if width == 0 || height == 0 {
            return Err(corrupt(format!("image size {width}x{height}")));
        }
        if steps_done > next_index || next_index >= steps {
            return Err(corrupt(format!(
                "{steps_done} steps done and next step {next_index} of {steps}"
            )));
        }
        if latent_len == 0 || count == 0 {
            return Err(corrupt(format!(
                "{count} images of {latent_len} latent values"
            )));
        }
        // Bounded by the input's length, so a bad count cannot ask for a huge allocation.
        let mut images = Vec::with_capacity(count.min(body.len() / latent_len.saturating_mul(4)));
        for _ in 0..count {
            let seed = r.u64()?;
            let index = r.u32()? as usize;
            let mut state = [0u32; STATE_WORDS];
            let words = r.take(4 * STATE_WORDS)?;
            for (w, c) in state.iter_mut().zip(words.chunks_exact(4)) {
                *w = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
            let noise = NoiseGenerator::from_parts(state, index)
                .ok_or_else(|| corrupt(format!("noise index {index} past the state")))?;
            let lower = r.u8()? as usize;
            if lower > ItemState::MAX_LOWER_ORDER_NUMS {
                return Err(corrupt(format!("lower_order_nums {lower}")));
            }
            let has_prev = match r.u8()? {
                0 => false,
                1 => true,
                other => return Err(corrupt(format!("previous-x0 flag {other}"))),
            };
            let latents = r.f32s(latent_len)?;
            let prev = if has_prev {
                Some(r.f32s(latent_len)?)
            } else {
                None
            };
            images.push(ImageCheckpoint {
                seed,
                latents,
                state: ItemState::from_parts(prev, lower),
                noise,
            });
        }
        if r.at != body.len() {
            return Err(corrupt(format!(
                "{} bytes after the last image",
                body.len() - r.at
            )));
        }
        Ok(Self {
            scheduler,
            width,
            height,
            steps,
            steps_done,
            next_index,
            images,
        })
    }

    /// Latent values per image (all of a checkpoint's images share a size).
    pub(crate) fn latent_len(&self) -> usize {
        self.images.first().map_or(0, |i| i.latents.len())
    }

    fn encoded_len(&self) -> usize {
        let per_image = 8 + 4 + 4 * STATE_WORDS + 2;
        let values: usize = self
            .images
            .iter()
            .map(|i| i.latents.len() + i.state.prev_x0().map_or(0, <[f32]>::len))
            .sum();
        HEADER + self.images.len() * per_image + 4 * values + CRC_LEN
    }
}

fn corrupt(what: impl Into<String>) -> CheckpointError {
    CheckpointError::Corrupt(what.into())
}

/// Stable codes: the enum's order is free to change, the encoding's is not.
fn scheduler_code(kind: SchedulerKind) -> u8 {
    match kind {
        SchedulerKind::Euler => 0,
        SchedulerKind::EulerA => 1,
        SchedulerKind::Ddim => 2,
        SchedulerKind::DpmPP2M => 3,
        SchedulerKind::DpmPP2MKarras => 4,
        SchedulerKind::Lcm => 5,
        SchedulerKind::FlowMatchEuler => 6,
    }
}

fn scheduler_from_code(code: u8) -> Option<SchedulerKind> {
    SchedulerKind::ALL
        .into_iter()
        .find(|&k| scheduler_code(k) == code)
}

/// Into space reserved up front: a push per value would check capacity per value.
fn put_f32s(out: &mut Vec<u8>, values: &[f32]) {
    let at = out.len();
    out.resize(at + 4 * values.len(), 0);
    for (dst, v) in out[at..].chunks_exact_mut(4).zip(values) {
        dst.copy_from_slice(&v.to_le_bytes());
    }
}

/// Reads fields in order; running out of bytes is corruption, since the
/// total length was already checked against the header.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CheckpointError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| {
                corrupt(format!(
                    "its fields run past its length (at byte {})",
                    self.at
                ))
            })?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], CheckpointError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, CheckpointError> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, CheckpointError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, CheckpointError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn f32s(&mut self, n: usize) -> Result<Vec<f32>, CheckpointError> {
        let bytes = n
            .checked_mul(4)
            .ok_or_else(|| corrupt(format!("{n} latent values")))?;
        Ok(self
            .take(bytes)?
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }
}

/// CRC-32 (IEEE 802.3, as zlib and PNG), slicing by 8: a checkpoint is
/// hundreds of kilobytes, and a byte-at-a-time table would be the slowest
/// part of writing one.
fn crc32(bytes: &[u8]) -> u32 {
    let t = &CRC_TABLES;
    let mut crc = !0u32;
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let lo = u32::from_le_bytes([c[0], c[1], c[2], c[3]]) ^ crc;
        let hi = u32::from_le_bytes([c[4], c[5], c[6], c[7]]);
        crc = t[7][(lo & 0xff) as usize]
            ^ t[6][((lo >> 8) & 0xff) as usize]
            ^ t[5][((lo >> 16) & 0xff) as usize]
            ^ t[4][(lo >> 24) as usize]
            ^ t[3][(hi & 0xff) as usize]
            ^ t[2][((hi >> 8) & 0xff) as usize]
            ^ t[1][((hi >> 16) & 0xff) as usize]
            ^ t[0][(hi >> 24) as usize];
    }
    for &b in chunks.remainder() {
        crc = t[0][((crc ^ b as u32) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

static CRC_TABLES: [[u32; 256]; 8] = crc_tables();

const fn crc_tables() -> [[u32; 256]; 8] {
    let mut t = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    let mut i = 0;
    while i < 256 {
        let mut j = 1;
        while j < 8 {
            t[j][i] = (t[j - 1][i] >> 8) ^ t[0][(t[j - 1][i] & 0xff) as usize];
            j += 1;
        }
        i += 1;
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A checkpoint like the pipeline's: noise drawn past the initial
    /// latents, DPM++ history on the second image only.
    fn sample(latent_len: usize) -> Checkpoint {
        let images = (0..2u64)
            .map(|k| {
                let seed = 40 + k;
                let mut noise = NoiseGenerator::new(seed);
                let latents = noise.randn(latent_len);
                noise.randn(7);
                let state = if k == 1 {
                    ItemState::from_parts(Some(latents.iter().map(|v| v * 0.5).collect()), 2)
                } else {
                    ItemState::default()
                };
                ImageCheckpoint {
                    seed,
                    latents,
                    state,
                    noise,
                }
            })
            .collect();
        Checkpoint {
            scheduler: SchedulerKind::DpmPP2M,
            width: 64,
            height: 48,
            steps: 20,
            steps_done: 6,
            next_index: 10,
            images,
        }
    }

    fn bytewise_crc(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc = CRC_TABLES[0][((crc ^ b as u32) & 0xff) as usize] ^ (crc >> 8);
        }
        !crc
    }

    #[test]
    fn crc_is_ieee_crc32() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        for len in [1, 7, 8, 9, 15, 16, 17, 999, 1000] {
            assert_eq!(crc32(&data[..len]), bytewise_crc(&data[..len]), "{len}");
        }
    }

    #[test]
    fn round_trips_every_field() {
        let c = sample(4 * 6 * 8);
        let bytes = c.to_bytes();
        assert_eq!(bytes.len(), c.encoded_len());
        assert_eq!(&bytes[..8], MAGIC);
        let back = Checkpoint::from_bytes(&bytes).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.steps_done(), 6);
        assert_eq!(back.images(), 2);
        // The generators continue where they stood.
        let mut a = c.images[0].noise.clone();
        let mut b = back.images[0].noise.clone();
        assert_eq!(a.randn(100), b.randn(100));
        // Encoding is deterministic: the same checkpoint gives the same bytes.
        assert_eq!(back.to_bytes(), bytes);
    }

    #[test]
    fn every_scheduler_code_round_trips() {
        for kind in SchedulerKind::ALL {
            assert_eq!(scheduler_from_code(scheduler_code(kind)), Some(kind));
        }
        assert_eq!(scheduler_from_code(200), None);
    }

    #[test]
    fn truncation_is_an_error_at_every_length() {
        let bytes = sample(16).to_bytes();
        for len in 0..bytes.len() {
            let err = Checkpoint::from_bytes(&bytes[..len]).unwrap_err();
            assert!(
                matches!(err, CheckpointError::Truncated { .. }),
                "{len}: {err}"
            );
        }
    }

    #[test]
    fn any_damaged_byte_is_an_error() {
        let bytes = sample(16).to_bytes();
        for at in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[at] ^= 0x24;
            assert!(Checkpoint::from_bytes(&bad).is_err(), "byte {at}");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(matches!(
            Checkpoint::from_bytes(&long),
            Err(CheckpointError::Corrupt(_))
        ));
        assert_eq!(
            Checkpoint::from_bytes(b"PNG\x89 not a checkpoint"),
            Err(CheckpointError::NotACheckpoint)
        );
    }

    #[test]
    fn another_version_is_refused_as_such() {
        let mut bytes = sample(16).to_bytes();
        bytes[8..10].copy_from_slice(&2u16.to_le_bytes());
        assert_eq!(
            Checkpoint::from_bytes(&bytes),
            Err(CheckpointError::UnsupportedVersion {
                found: 2,
                supported: 1
            })
        );
    }

    /// Fields a valid checksum can still carry wrong (a writer's bug) are refused.
    #[test]
    fn inconsistent_fields_are_refused_even_with_a_good_checksum() {
        let reseal = |mut bytes: Vec<u8>| {
            let n = bytes.len() - CRC_LEN;
            let crc = crc32(&bytes[..n]);
            bytes[n..].copy_from_slice(&crc.to_le_bytes());
            bytes
        };
        let good = sample(16).to_bytes();
        // Offsets within the header: scheduler, then width, height, steps, done, next.
        let mut cases: Vec<(usize, Vec<u8>)> = vec![
            (PREAMBLE, vec![9]),
            (PREAMBLE + 1, 0u32.to_le_bytes().to_vec()),
            (PREAMBLE + 13, 11u32.to_le_bytes().to_vec()),
            (PREAMBLE + 17, 20u32.to_le_bytes().to_vec()),
        ];
        // The first image's noise index, then its lower_order_nums and flag.
        let image = HEADER + 8;
        cases.push((image, 625u32.to_le_bytes().to_vec()));
        cases.push((image + 4 + 4 * STATE_WORDS, vec![3]));
        cases.push((image + 4 + 4 * STATE_WORDS + 1, vec![2]));
        for (at, value) in cases {
            let mut bytes = good.clone();
            bytes[at..at + value.len()].copy_from_slice(&value);
            let err = Checkpoint::from_bytes(&reseal(bytes)).unwrap_err();
            assert!(matches!(err, CheckpointError::Corrupt(_)), "{at}: {err}");
        }
    }

    #[test]
    fn debug_output_stays_short() {
        let c = sample(4 * 64 * 64);
        assert!(format!("{c:?}").len() < 1000);
    }
}
