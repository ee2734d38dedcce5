//! Inference on frames of any size: replicate-padding to a multiple of 8 (RAFT's
//! `InputPadder`), one evaluation solve, the flow cropped back.

use candle_core::{DType, Device, Tensor};
use deq_core::Deq;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::flow::Flow;
use crate::io::frames::Frame;
use crate::model::DeqFlow;

/// Where the padding goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PadMode {
    /// Split evenly top/bottom and left/right (Sintel, Chairs, folders).
    #[default]
    Sintel,
    /// Left/right evenly, all vertical padding at the bottom (KITTI).
    Kitti,
}

/// Padding of a frame to a multiple of 8: `(top, bottom, left, right)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Padder {
    /// Rows added above.
    pub top: usize,
    /// Rows added below.
    pub bottom: usize,
    /// Columns added on the left.
    pub left: usize,
    /// Columns added on the right.
    pub right: usize,
}

impl Padder {
    /// The padding of a `height x width` frame.
    pub fn new(height: usize, width: usize, mode: PadMode) -> Self {
        let (ph, pw) = ((8 - height % 8) % 8, (8 - width % 8) % 8);
        let (left, right) = (pw / 2, pw - pw / 2);
        match mode {
            PadMode::Sintel => Self { top: ph / 2, bottom: ph - ph / 2, left, right },
            PadMode::Kitti => Self { top: 0, bottom: ph, left, right },
        }
    }

    /// Pads `(B, C, H, W)` by repeating the edge pixels.
    pub fn pad(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.pad_with_same(2, self.top, self.bottom)?;
        Ok(x.pad_with_same(3, self.left, self.right)?)
    }

    /// Crops the padding off `(B, C, H', W')`.
    pub fn unpad(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        Ok(x.narrow(2, self.top, h - self.top - self.bottom)?.narrow(3, self.left, w - self.left - self.right)?)
    }
}

/// A prediction with its solver statistics.
#[derive(Debug, Clone)]
pub struct Prediction {
    /// The full-resolution flow.
    pub flow: Flow,
    /// The 1/8-resolution flow of the padded frames `(1, 2, H'/8, W'/8)` (a warm start).
    pub flow_low: Tensor,
    /// Forward solver steps.
    pub nfe: usize,
    /// The final relative residual.
    pub rel_residual: f64,
    /// The final absolute residual.
    pub abs_residual: f64,
}

/// The flow from `a` to `b` (same size) with an evaluation-mode `deq`.
pub fn predict(model: &DeqFlow, deq: &Deq, a: &Frame, b: &Frame, mode: PadMode, flow_init: Option<&Tensor>, device: &Device) -> Result<Prediction> {
    if (a.height, a.width) != (b.height, b.width) {
        return Err(candle_core::Error::Msg(format!("frames of {}x{} and {}x{} differ in size", a.height, a.width, b.height, b.width)).into());
    }
    let padder = Padder::new(a.height, a.width, mode);
    let t1 = padder.pad(&a.to_tensor(device)?.unsqueeze(0)?)?;
    let t2 = padder.pad(&b.to_tensor(device)?.unsqueeze(0)?)?;
    let out = model.forward(&t1, &t2, flow_init, deq, false)?;
    let flow = padder.unpad(&out.flows[out.flows.len() - 1])?.squeeze(0)?.to_dtype(DType::F32)?;
    let stats = &out.stats;
    Ok(Prediction { flow: Flow::from_tensor(&flow)?, flow_low: out.flow_low, nfe: stats.nfe, rel_residual: stats.mean_rel(), abs_residual: stats.mean_abs() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_matches_rafts_padder_and_round_trips() {
        assert_eq!(Padder::new(436, 1024, PadMode::Sintel), Padder { top: 2, bottom: 2, left: 0, right: 0 });
        assert_eq!(Padder::new(375, 1242, PadMode::Kitti), Padder { top: 0, bottom: 1, left: 3, right: 3 });
        assert_eq!(Padder::new(375, 1242, PadMode::Sintel), Padder { top: 0, bottom: 1, left: 3, right: 3 });
        assert_eq!(Padder::new(381, 420, PadMode::Sintel), Padder { top: 1, bottom: 2, left: 2, right: 2 });
        let p = Padder::new(5, 6, PadMode::Sintel);
        let x = Tensor::arange(0f32, 30.0, &Device::Cpu).unwrap().reshape((1, 1, 5, 6)).unwrap();
        let y = p.pad(&x).unwrap();
        assert_eq!(y.dims(), &[1, 1, 8, 8]);
        // Edge replication: the top-left corner repeats pixel (0, 0).
        assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0], 0.0);
        assert_eq!(p.unpad(&y).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap(), x.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    }
}
