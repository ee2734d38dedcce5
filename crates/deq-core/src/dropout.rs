//! Variational dropout: one mask per training step, shared by every solver iteration
//! (TorchDEQ's `VariationalDropout*`; reset with [`VariationalDropout::reset`]).

use crate::rng::DeqRng;
use candle_core::{Result, Tensor};
use std::sync::Mutex;

/// Which entries share a mask value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropShape {
    /// An independent mask entry for every element.
    Full,
    /// One value per sample and channel (dim 1), shared over the remaining dims.
    Channel,
    /// One value per sample and position, shared over the channel dim (dim 1).
    Token,
}

/// Dropout whose mask is drawn once and reused until [`VariationalDropout::reset`].
#[derive(Debug)]
pub struct VariationalDropout {
    p: f64,
    shape: DropShape,
    mask: Mutex<Option<Tensor>>,
    rng: Mutex<DeqRng>,
}

impl VariationalDropout {
    /// Dropout probability `p` in `[0, 1)`.
    pub fn new(p: f64, shape: DropShape, seed: u64) -> crate::Result<Self> {
        if !(0.0..1.0).contains(&p) {
            return Err(crate::DeqError::Config { key: "dropout".into(), message: format!("probability must be in [0, 1), got {p}") });
        }
        Ok(Self { p, shape, mask: Mutex::new(None), rng: Mutex::new(DeqRng::new(seed)) })
    }

    /// Forgets the mask; the next training forward draws a new one.
    pub fn reset(&self) {
        *self.mask.lock().expect("mask poisoned") = None;
    }

    /// Forgets the mask and restarts the generator at `seed`: the next mask depends on `seed`
    /// alone, not on how many were drawn before (a run resumed from a checkpoint then draws
    /// the masks of the uninterrupted run when it derives `seed` from the step).
    pub fn reset_with_seed(&self, seed: u64) {
        self.reset();
        *self.rng.lock().expect("rng poisoned") = DeqRng::new(seed);
    }

    /// Applies the mask in training mode; the identity otherwise.
    pub fn forward(&self, x: &Tensor, training: bool) -> Result<Tensor> {
        if !training || self.p == 0.0 {
            return Ok(x.clone());
        }
        let mut guard = self.mask.lock().expect("mask poisoned");
        let dims = x.dims();
        let mask_dims: Vec<usize> = match self.shape {
            DropShape::Full => dims.to_vec(),
            DropShape::Channel => dims.iter().enumerate().map(|(i, &d)| if i <= 1 { d } else { 1 }).collect(),
            DropShape::Token => dims.iter().enumerate().map(|(i, &d)| if i == 1 { 1 } else { d }).collect(),
        };
        let stale = guard.as_ref().is_none_or(|m| m.dims() != mask_dims.as_slice() || m.dtype() != x.dtype());
        if stale {
            let mut rng = self.rng.lock().expect("rng poisoned");
            *guard = Some(rng.dropout_mask(mask_dims, 1.0 - self.p, x.dtype(), x.device())?);
        }
        x.broadcast_mul(guard.as_ref().expect("mask drawn"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn reseeded_masks_depend_on_the_seed_alone() {
        let d = VariationalDropout::new(0.5, DropShape::Full, 1).unwrap();
        let x = Tensor::ones((4, 16), DType::F32, &Device::Cpu).unwrap();
        let draw = |seed: Option<u64>| {
            match seed {
                Some(s) => d.reset_with_seed(s),
                None => d.reset(),
            }
            d.forward(&x, true).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
        };
        let a = draw(Some(7));
        let _ = draw(None);
        let _ = draw(None);
        assert_eq!(draw(Some(7)), a, "the same seed, whatever was drawn in between");
        assert_ne!(draw(Some(8)), a);
        let first = d.forward(&x, true).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(d.forward(&x, true).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap(), first, "one mask until the next reset");
    }
}
