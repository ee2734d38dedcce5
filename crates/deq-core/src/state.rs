//! Multi-tensor states.
//!
//! A DEQ state is a list of tensors that all share the batch dimension (dim 0) but may have
//! different shapes, e.g. the multi-resolution features of MDEQ. Solvers work on one flat
//! `(batch, total)` matrix; [`StateLayout`] converts between the two views.

use crate::error::{shape_err, Result};
use candle_core::{Shape, Tensor};

/// The shapes of a multi-tensor state, used to flatten it to `(batch, total)` and back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateLayout {
    shapes: Vec<Shape>,
    sizes: Vec<usize>,
    batch: usize,
}

impl StateLayout {
    /// Records the layout of `state`. Every tensor must have rank >= 1 and the same batch size.
    pub fn of(state: &[Tensor]) -> Result<Self> {
        if state.is_empty() {
            return Err(shape_err("StateLayout::of", "the state has no tensors"));
        }
        let mut shapes = Vec::with_capacity(state.len());
        let mut sizes = Vec::with_capacity(state.len());
        let batch = state[0].dims().first().copied().ok_or_else(|| {
            shape_err("StateLayout::of", "state tensors need a batch dimension (rank >= 1)")
        })?;
        for (i, t) in state.iter().enumerate() {
            let dims = t.dims();
            if dims.is_empty() || dims[0] != batch {
                return Err(shape_err(
                    "StateLayout::of",
                    format!("tensor {i} has shape {:?}, expected batch size {batch}", dims),
                ));
            }
            shapes.push(t.shape().clone());
            sizes.push(dims[1..].iter().product::<usize>());
        }
        Ok(Self { shapes, sizes, batch })
    }

    /// Batch size.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Number of features per sample once flattened.
    pub fn width(&self) -> usize {
        self.sizes.iter().sum()
    }

    /// Shapes of the component tensors.
    pub fn shapes(&self) -> &[Shape] {
        &self.shapes
    }

    /// Checks that `state` has exactly this layout.
    pub fn check(&self, state: &[Tensor], context: &'static str) -> Result<()> {
        if state.len() != self.shapes.len() {
            return Err(shape_err(
                context,
                format!("expected {} state tensors, got {}", self.shapes.len(), state.len()),
            ));
        }
        for (i, (t, s)) in state.iter().zip(&self.shapes).enumerate() {
            if t.shape() != s {
                return Err(shape_err(
                    context,
                    format!("state tensor {i} has shape {:?}, expected {:?}", t.dims(), s.dims()),
                ));
            }
        }
        Ok(())
    }

    /// Flattens a state with this layout into a contiguous `(batch, width)` matrix.
    pub fn flatten(&self, state: &[Tensor]) -> Result<Tensor> {
        self.check(state, "StateLayout::flatten")?;
        if state.len() == 1 {
            return Ok(state[0].reshape((self.batch, self.sizes[0]))?);
        }
        let flat: Vec<Tensor> = state
            .iter()
            .zip(&self.sizes)
            .map(|(t, &d)| t.reshape((self.batch, d)))
            .collect::<candle_core::Result<_>>()?;
        Ok(Tensor::cat(&flat, 1)?)
    }

    /// Applies a state function to a flat state: unflattens `z`, calls `f`, checks that the
    /// output keeps this layout (the error names it "DEQ function output") and flattens it.
    pub fn apply_flat(&self, z: &Tensor, f: impl FnOnce(&[Tensor]) -> candle_core::Result<Vec<Tensor>>) -> Result<Tensor> {
        let out = f(&self.unflatten(z)?)?;
        self.check(&out, "DEQ function output")?;
        self.flatten(&out)
    }

    /// Splits a `(batch, width)` matrix back into the component tensors.
    pub fn unflatten(&self, flat: &Tensor) -> Result<Vec<Tensor>> {
        if flat.dims() != [self.batch, self.width()] {
            return Err(shape_err(
                "StateLayout::unflatten",
                format!("got {:?}, expected [{}, {}]", flat.dims(), self.batch, self.width()),
            ));
        }
        if self.shapes.len() == 1 {
            return Ok(vec![flat.reshape(self.shapes[0].clone())?]);
        }
        let mut out = Vec::with_capacity(self.shapes.len());
        let mut offset = 0;
        for (s, &d) in self.shapes.iter().zip(&self.sizes) {
            out.push(flat.narrow(1, offset, d)?.reshape(s.clone())?);
            offset += d;
        }
        Ok(out)
    }
}

/// Detaches every tensor of a state.
pub fn detach_state(state: &[Tensor]) -> Vec<Tensor> {
    state.iter().map(|t| t.detach()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn flatten_round_trip() -> Result<()> {
        let dev = Device::Cpu;
        let a = Tensor::arange(0f32, 24., &dev)?.reshape((2, 3, 4))?;
        let b = Tensor::arange(0f32, 4., &dev)?.reshape((2, 2))?;
        let layout = StateLayout::of(&[a.clone(), b.clone()])?;
        assert_eq!(layout.width(), 14);
        let flat = layout.flatten(&[a.clone(), b.clone()])?;
        assert_eq!(flat.dims(), &[2, 14]);
        let back = layout.unflatten(&flat)?;
        assert_eq!(back[0].to_vec3::<f32>()?, a.to_vec3::<f32>()?);
        assert_eq!(back[1].to_vec2::<f32>()?, b.to_vec2::<f32>()?);
        Ok(())
    }

    #[test]
    fn mismatched_batch_is_an_error() {
        let dev = Device::Cpu;
        let a = Tensor::zeros((2, 3), DType::F32, &dev).unwrap();
        let b = Tensor::zeros((3, 3), DType::F32, &dev).unwrap();
        assert!(StateLayout::of(&[a.clone(), b]).is_err());
        let layout = StateLayout::of(&[a]).unwrap();
        let wrong = Tensor::zeros((2, 4), DType::F32, &dev).unwrap();
        assert!(layout.flatten(&[wrong]).is_err());
    }
}
