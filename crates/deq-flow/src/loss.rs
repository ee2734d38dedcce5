//! The training loss and the evaluation metrics of optical flow.
//!
//! The loss is DEQ-Flow's fixed-point correction of RAFT's sequence loss: each supervised
//! state's upsampled flow contributes `mean(valid * |flow - gt|)` (L1 per component, averaged
//! over every element including invalid pixels, as the reference does), weighted by
//! `gamma^(n - 1 - i)`; pixels are valid where the ground truth says so and its magnitude is
//! below `max_flow` (400).

use candle_core::{DType, Result, Tensor};
use deq_core::loss::{fp_correction, CorrectionWeight};

/// The validity mask `(B, H, W)` of the loss: `valid >= 0.5` and `|gt| < max_flow`.
pub fn loss_mask(gt: &Tensor, valid: &Tensor, max_flow: f64) -> Result<Tensor> {
    let mag = gt.sqr()?.sum(1)?.sqrt()?;
    let ok = valid.ge(0.5)?.to_dtype(gt.dtype())?;
    let small = mag.lt(max_flow)?.to_dtype(gt.dtype())?;
    ok * small
}

/// `mean(mask * |flow - gt|)` over `(B, 2, H, W)`.
pub fn l1_loss(flow: &Tensor, gt: &Tensor, mask: &Tensor) -> Result<Tensor> {
    (flow - gt)?.abs()?.broadcast_mul(&mask.unsqueeze(1)?)?.mean_all()
}

/// The fixed-point correction loss over the supervised states' flows (earliest first).
pub fn sequence_loss(flows: &[Tensor], gt: &Tensor, valid: &Tensor, gamma: f64, max_flow: f64) -> Result<Tensor> {
    let mask = loss_mask(gt, valid, max_flow)?;
    let losses = flows.iter().map(|f| l1_loss(f, gt, &mask)).collect::<Result<Vec<_>>>()?;
    fp_correction(&losses, CorrectionWeight::Exp { gamma }).map_err(|e| candle_core::Error::Msg(e.to_string()))
}

/// Sums of per-pixel errors over valid pixels, for pooled means.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FlowErrors {
    /// Valid pixels.
    pub count: f64,
    /// Sum of end-point errors.
    pub epe_sum: f64,
    /// Pixels with EPE below 1, 3 and 5.
    pub within: [f64; 3],
    /// KITTI outliers: EPE > 3 and EPE > 5% of the ground truth's magnitude.
    pub outliers: f64,
}

impl FlowErrors {
    /// The errors of `pred` against `gt` (`(2, H, W)` each, or batched `(B, 2, H, W)`) on
    /// pixels where `valid` `(H, W)` / `(B, H, W)` is at least 0.5.
    pub fn of(pred: &Tensor, gt: &Tensor, valid: &Tensor) -> Result<Self> {
        let err = (pred.to_dtype(DType::F64)? - gt.to_dtype(DType::F64)?)?;
        let d = err.rank();
        let epe = err.sqr()?.sum(d - 3)?.sqrt()?.flatten_all()?.to_vec1::<f64>()?;
        let mag = gt.to_dtype(DType::F64)?.sqr()?.sum(d - 3)?.sqrt()?.flatten_all()?.to_vec1::<f64>()?;
        let valid = valid.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        if valid.len() != epe.len() {
            candle_core::bail!("flow errors: mask {:?} does not fit flow {:?}", valid.len(), pred.dims());
        }
        let mut e = Self::default();
        for ((&v, &x), &m) in valid.iter().zip(&epe).zip(&mag) {
            if v < 0.5 {
                continue;
            }
            e.count += 1.0;
            e.epe_sum += x;
            for (w, t) in e.within.iter_mut().zip([1.0, 3.0, 5.0]) {
                if x < t {
                    *w += 1.0;
                }
            }
            if x > 3.0 && x > 0.05 * m {
                e.outliers += 1.0;
            }
        }
        Ok(e)
    }

    /// Adds another set of sums.
    pub fn add(&mut self, o: &Self) {
        self.count += o.count;
        self.epe_sum += o.epe_sum;
        for (a, b) in self.within.iter_mut().zip(o.within) {
            *a += b;
        }
        self.outliers += o.outliers;
    }

    /// Mean end-point error (NaN without valid pixels).
    pub fn epe(&self) -> f64 {
        self.epe_sum / self.count
    }

    /// Shares of pixels within 1, 3 and 5 pixels.
    pub fn accuracies(&self) -> [f64; 3] {
        self.within.map(|w| w / self.count)
    }

    /// KITTI's F1-all in percent.
    pub fn f1_all(&self) -> f64 {
        100.0 * self.outliers / self.count
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn loss_weights_states_and_masks_large_and_invalid_flow() {
        let dev = Device::Cpu;
        let gt = Tensor::from_vec(vec![1.0f64, 500.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0], (1, 2, 2, 2), &dev).unwrap();
        let valid = Tensor::from_vec(vec![1.0f64, 1.0, 0.0, 1.0], (1, 2, 2), &dev).unwrap();
        let zero = Tensor::zeros((1, 2, 2, 2), DType::F64, &dev).unwrap();
        // Pixel 0: |gt| = 1, valid; pixel 1: |gt| = 500 masked; pixel 2: invalid; pixel 3: 2.
        let one = sequence_loss(&[zero.clone()], &gt, &valid, 0.8, 400.0).unwrap().to_scalar::<f64>().unwrap();
        assert!((one - (1.0 + 2.0) / 8.0).abs() < 1e-12, "{one}");
        let two = sequence_loss(&[zero.clone(), gt.clone()], &gt, &valid, 0.8, 400.0).unwrap().to_scalar::<f64>().unwrap();
        assert!((two - 0.8 * 3.0 / 8.0).abs() < 1e-12, "{two}");
        let e = FlowErrors::of(&zero, &gt, &valid).unwrap();
        assert_eq!(e.count, 3.0);
        assert!((e.epe() - (1.0 + 500.0 + 2.0) / 3.0).abs() < 1e-12);
        assert_eq!(e.accuracies(), [0.0, 2.0 / 3.0, 2.0 / 3.0]);
        assert!((e.f1_all() - 100.0 / 3.0).abs() < 1e-12);
    }
}
