//! Fitting any batch to components compiled for one static batch size.
//!
//! Neuron components accept exactly the batch they were traced with. A smaller
//! batch is padded up (by repeating its last row, which is always a valid
//! input) and the padding rows are dropped from the output; a larger batch is
//! split into chunks of the compiled size. Rows are independent in every SD
//! component, so the real rows' outputs do not depend on the padding.

use anyaccel_executor::{Tensor, TensorError, TokenIds};

/// Rows `start..end` of the caller's batch, sent as a batch of `padded` rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Chunk {
    pub start: usize,
    pub end: usize,
    pub padded: usize,
}

impl Chunk {
    pub fn rows(&self) -> usize {
        self.end - self.start
    }
}

/// How to send `n` rows to a component that takes `fixed` rows per call
/// (`None`: any batch, one call).
pub(crate) fn plan(n: usize, fixed: Option<usize>) -> Vec<Chunk> {
    match fixed {
        None | Some(0) => vec![Chunk {
            start: 0,
            end: n,
            padded: n,
        }],
        Some(b) => (0..n.div_ceil(b))
            .map(|i| Chunk {
                start: i * b,
                end: ((i + 1) * b).min(n),
                padded: b,
            })
            .collect(),
    }
}

/// The chunk's rows of `t`, padded to `chunk.padded` rows with copies of the last one.
pub(crate) fn take(t: &Tensor, chunk: Chunk) -> Result<Tensor, TensorError> {
    let rows = t.slice_batch(chunk.start, chunk.end)?;
    if chunk.padded == chunk.rows() {
        return Ok(rows);
    }
    let last = t.slice_batch(chunk.end - 1, chunk.end)?;
    let mut parts: Vec<&Tensor> = vec![&rows];
    parts.extend(std::iter::repeat_n(&last, chunk.padded - chunk.rows()));
    Tensor::concat_batch(&parts)
}

/// The chunk's rows of token ids, padded like [`take`].
pub(crate) fn take_ids(ids: &TokenIds, chunk: Chunk) -> TokenIds {
    let row = |i: usize| &ids.ids[i * ids.len..(i + 1) * ids.len];
    let mut out = Vec::with_capacity(chunk.padded * ids.len);
    for i in chunk.start..chunk.end {
        out.extend_from_slice(row(i));
    }
    for _ in chunk.rows()..chunk.padded {
        out.extend_from_slice(row(chunk.end - 1));
    }
    TokenIds {
        batch: chunk.padded,
        len: ids.len,
        ids: out,
    }
}

/// The chunk's per-row values (timesteps), padded like [`take`].
pub(crate) fn take_values(values: &[f32], chunk: Chunk) -> Vec<f32> {
    let mut out = values[chunk.start..chunk.end].to_vec();
    out.resize(chunk.padded, values[chunk.end - 1]);
    out
}

/// Drops the padding rows of a chunk's output.
pub(crate) fn trim(out: Tensor, chunk: Chunk) -> Result<Tensor, TensorError> {
    if out.batch() == chunk.rows() {
        Ok(out)
    } else {
        out.slice_batch(0, chunk.rows())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(n: usize, width: usize) -> Tensor {
        Tensor::new(vec![n, width], (0..n * width).map(|v| v as f32).collect()).unwrap()
    }

    #[test]
    fn dynamic_is_one_call() {
        assert_eq!(
            plan(5, None),
            vec![Chunk {
                start: 0,
                end: 5,
                padded: 5
            }]
        );
    }

    #[test]
    fn pads_a_small_batch_and_splits_a_large_one() {
        assert_eq!(
            plan(1, Some(2)),
            vec![Chunk {
                start: 0,
                end: 1,
                padded: 2
            }]
        );
        assert_eq!(
            plan(5, Some(2)),
            vec![
                Chunk {
                    start: 0,
                    end: 2,
                    padded: 2
                },
                Chunk {
                    start: 2,
                    end: 4,
                    padded: 2
                },
                Chunk {
                    start: 4,
                    end: 5,
                    padded: 2
                },
            ]
        );
        assert_eq!(plan(4, Some(4)).len(), 1);
    }

    #[test]
    fn padding_repeats_the_last_row_and_is_trimmed() {
        let t = rows(3, 2);
        let chunk = plan(3, Some(4))[0];
        let padded = take(&t, chunk).unwrap();
        assert_eq!(padded.shape(), &[4, 2]);
        assert_eq!(padded.data(), &[0., 1., 2., 3., 4., 5., 4., 5.]);
        assert_eq!(trim(padded, chunk).unwrap(), t);
    }

    #[test]
    fn chunks_reassemble_the_batch() {
        let t = rows(5, 3);
        let parts: Vec<Tensor> = plan(5, Some(2))
            .into_iter()
            .map(|c| trim(take(&t, c).unwrap(), c).unwrap())
            .collect();
        let refs: Vec<&Tensor> = parts.iter().collect();
        assert_eq!(Tensor::concat_batch(&refs).unwrap(), t);
    }

    #[test]
    fn per_row_values_pad_with_the_last_row() {
        let c = plan(3, Some(2));
        assert_eq!(take_values(&[9.0, 8.0, 7.0], c[0]), vec![9.0, 8.0]);
        assert_eq!(take_values(&[9.0, 8.0, 7.0], c[1]), vec![7.0, 7.0]);
    }

    #[test]
    fn token_ids_pad_with_the_last_prompt() {
        let ids = TokenIds {
            batch: 3,
            len: 2,
            ids: vec![1, 2, 3, 4, 5, 6],
        };
        let c = plan(3, Some(2));
        assert_eq!(take_ids(&ids, c[0]).ids, vec![1, 2, 3, 4]);
        let last = take_ids(&ids, c[1]);
        assert_eq!((last.batch, last.ids), (2, vec![5, 6, 5, 6]));
    }
}
