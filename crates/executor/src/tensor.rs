/// A dense, row-major `f32` tensor on the host.
///
/// The pipeline keeps latents in f32 on every accelerator; an executor whose
/// model runs in another dtype converts at its boundary.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: Vec<f32>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TensorError {
    #[error("shape {shape:?} holds {expected} values but {actual} were given")]
    Size {
        shape: Vec<usize>,
        expected: usize,
        actual: usize,
    },
    #[error("cannot concatenate tensors of shapes {0:?} and {1:?}")]
    Concat(Vec<usize>, Vec<usize>),
    #[error("batch range {start}..{end} is out of bounds for batch {batch}")]
    Batch {
        start: usize,
        end: usize,
        batch: usize,
    },
}

impl Tensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self, TensorError> {
        let expected = shape.iter().product();
        if data.len() != expected {
            return Err(TensorError::Size {
                shape,
                expected,
                actual: data.len(),
            });
        }
        Ok(Self { shape, data })
    }

    pub fn zeros(shape: Vec<usize>) -> Self {
        let n = shape.iter().product();
        Self {
            shape,
            data: vec![0.0; n],
        }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn data(&self) -> &[f32] {
        &self.data
    }

    pub fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }

    pub fn into_data(self) -> Vec<f32> {
        self.data
    }

    /// Size of the leading (batch) dimension.
    pub fn batch(&self) -> usize {
        self.shape.first().copied().unwrap_or(1)
    }

    /// Number of values in one batch item.
    pub fn item_len(&self) -> usize {
        self.shape.iter().skip(1).product()
    }

    /// The values of batch item `i`.
    pub fn item(&self, i: usize) -> &[f32] {
        let n = self.item_len();
        &self.data[i * n..(i + 1) * n]
    }

    /// Batch items `start..end` as a new tensor.
    pub fn slice_batch(&self, start: usize, end: usize) -> Result<Tensor, TensorError> {
        if start > end || end > self.batch() {
            return Err(TensorError::Batch {
                start,
                end,
                batch: self.batch(),
            });
        }
        let n = self.item_len();
        let mut shape = self.shape.clone();
        shape[0] = end - start;
        Ok(Tensor {
            shape,
            data: self.data[start * n..end * n].to_vec(),
        })
    }

    /// Batch items `rows`, in that order, as a new tensor.
    pub fn gather(&self, rows: &[usize]) -> Result<Tensor, TensorError> {
        let batch = self.batch();
        let n = self.item_len();
        let mut data = Vec::with_capacity(rows.len() * n);
        for &r in rows {
            if r >= batch {
                return Err(TensorError::Batch {
                    start: r,
                    end: r + 1,
                    batch,
                });
            }
            data.extend_from_slice(self.item(r));
        }
        let mut shape = self.shape.clone();
        shape[0] = rows.len();
        Ok(Tensor { shape, data })
    }

    /// Concatenates along the batch dimension.
    pub fn concat_batch(parts: &[&Tensor]) -> Result<Tensor, TensorError> {
        let Some(first) = parts.first() else {
            return Ok(Tensor::zeros(vec![0]));
        };
        let mut shape = first.shape.clone();
        let mut data = Vec::with_capacity(parts.iter().map(|p| p.data.len()).sum());
        let mut batch = 0;
        for p in parts {
            if p.shape[1..] != first.shape[1..] {
                return Err(TensorError::Concat(first.shape.clone(), p.shape.clone()));
            }
            batch += p.batch();
            data.extend_from_slice(&p.data);
        }
        shape[0] = batch;
        Ok(Tensor { shape, data })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_wrong_length() {
        assert!(matches!(
            Tensor::new(vec![2, 3], vec![0.0; 5]),
            Err(TensorError::Size { expected: 6, .. })
        ));
    }

    #[test]
    fn slices_and_concats_batches() {
        let t = Tensor::new(vec![3, 2], vec![0., 1., 2., 3., 4., 5.]).unwrap();
        let a = t.slice_batch(0, 1).unwrap();
        let b = t.slice_batch(1, 3).unwrap();
        assert_eq!(b.data(), &[2., 3., 4., 5.]);
        assert_eq!(Tensor::concat_batch(&[&a, &b]).unwrap(), t);
        assert!(t.slice_batch(2, 4).is_err());
        let c = Tensor::zeros(vec![1, 3]);
        assert!(Tensor::concat_batch(&[&a, &c]).is_err());
    }
}
