//! Gaussian noise that matches PyTorch's CPU generator bit for bit (up to libm
//! rounding), so a seed gives the same initial latents as
//! `torch.randn(shape, generator=torch.Generator().manual_seed(seed))` and the
//! same images as diffusers with one CPU generator per image.
//!
//! torch's CPU generator is a 32-bit Mersenne Twister; `randn` on a float
//! tensor of 16 or more values fills it with uniforms and then applies the
//! Box–Muller transform to blocks of 16 (pairs `j`, `j + 8`).

const N: usize = 624;
const M: usize = 397;

/// Words in the generator's state (what a checkpoint stores).
pub(crate) const STATE_WORDS: usize = N;

/// One image's random stream: initial latents, then any per-step noise.
#[derive(Clone, PartialEq, Eq)]
pub struct NoiseGenerator {
    state: [u32; N],
    index: usize,
}

impl std::fmt::Debug for NoiseGenerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NoiseGenerator")
            .field("index", &self.index)
            .finish()
    }
}

impl NoiseGenerator {
    /// Seeds like `torch.Generator().manual_seed(seed)`: only the low 32 bits count.
    pub fn new(seed: u64) -> Self {
        let mut state = [0u32; N];
        state[0] = seed as u32;
        for i in 1..N {
            let prev = state[i - 1];
            state[i] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(i as u32);
        }
        Self { state, index: N }
    }

    /// A generator at a saved position (a checkpoint's); `None` if `index`
    /// is past the state, which no generator ever reaches.
    pub(crate) fn from_parts(state: [u32; N], index: usize) -> Option<Self> {
        (index <= N).then_some(Self { state, index })
    }

    /// The state words and the index of the next one to temper.
    pub(crate) fn parts(&self) -> (&[u32; N], usize) {
        (&self.state, self.index)
    }

    fn twist(&mut self) {
        for i in 0..N {
            let y = (self.state[i] & 0x8000_0000) | (self.state[(i + 1) % N] & 0x7fff_ffff);
            let mut next = self.state[(i + M) % N] ^ (y >> 1);
            if y & 1 != 0 {
                next ^= 0x9908_b0df;
            }
            self.state[i] = next;
        }
        self.index = 0;
    }

    fn next_u32(&mut self) -> u32 {
        if self.index >= N {
            self.twist();
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^= y >> 18;
        y
    }

    /// A float in [0, 1) from 24 random bits, as torch's `uniform_real_distribution<float>`.
    fn uniform(&mut self) -> f32 {
        (self.next_u32() & ((1 << 24) - 1)) as f32 * (1.0 / (1u32 << 24) as f32)
    }

    /// `len` standard normal values, as one `torch.randn` call of that many floats.
    ///
    /// torch switches to a different (double-precision) algorithm below 16
    /// values; latents are always larger, so shorter requests are padded to 16
    /// and truncated, which is deterministic but not torch-identical.
    pub fn randn(&mut self, len: usize) -> Vec<f32> {
        let n = len.max(16);
        let mut data: Vec<f32> = (0..n).map(|_| self.uniform()).collect();
        let mut i = 0;
        while i + 16 <= n {
            box_muller_16(&mut data[i..i + 16]);
            i += 16;
        }
        if !n.is_multiple_of(16) {
            // torch redraws the last 16 values and transforms them again.
            let tail = n - 16;
            for v in &mut data[tail..] {
                *v = self.uniform();
            }
            box_muller_16(&mut data[tail..]);
        }
        data.truncate(len);
        data
    }
}

fn box_muller_16(data: &mut [f32]) {
    for j in 0..8 {
        let u1 = 1.0 - data[j];
        let u2 = data[j + 8];
        let radius = (-2.0 * u1.ln()).sqrt();
        let theta = 2.0 * std::f32::consts::PI * u2;
        data[j] = radius * theta.cos();
        data[j + 8] = radius * theta.sin();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mersenne_twister_matches_reference_sequence() {
        // std::mt19937 with the default seed 5489: the 10000th output is 4123659995.
        let mut g = NoiseGenerator::new(5489);
        let mut last = 0;
        for _ in 0..10_000 {
            last = g.next_u32();
        }
        assert_eq!(last, 4_123_659_995);
    }

    #[test]
    fn normal_values_look_standard() {
        let v = NoiseGenerator::new(7).randn(100_000);
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / v.len() as f64;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "variance {var}");
    }

    #[test]
    fn a_saved_position_continues_the_stream() {
        let mut g = NoiseGenerator::new(11);
        g.randn(1000);
        let (state, index) = g.parts();
        let mut copy = NoiseGenerator::from_parts(*state, index).unwrap();
        assert_eq!(copy.randn(2000), g.randn(2000));
        assert!(NoiseGenerator::from_parts([0; N], N + 1).is_none());
    }

    #[test]
    fn same_seed_same_stream() {
        assert_eq!(
            NoiseGenerator::new(3).randn(40),
            NoiseGenerator::new(3).randn(40)
        );
        assert_ne!(
            NoiseGenerator::new(3).randn(40),
            NoiseGenerator::new(4).randn(40)
        );
    }
}
