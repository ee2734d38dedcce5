//! A dense optical-flow field: `(u, v)` per pixel, with an optional validity mask.

use candle_core::{Device, Tensor};

use crate::error::Result;

/// Flow values whose magnitude exceeds this are "unknown" in the Middlebury `.flo` convention.
pub const UNKNOWN_FLOW: f32 = 1e9;

/// A flow field of `height x width` pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct Flow {
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
    /// `height * width * 2` values, row-major, `(u, v)` interleaved (u to the right, v down).
    pub uv: Vec<f32>,
    /// Optional per-pixel validity (`height * width`, 1 valid / 0 not): KITTI's and HD1K's
    /// sparse ground truth, or the complement of Sintel's invalid mask.
    pub valid: Option<Vec<f32>>,
}

impl Flow {
    /// A zero flow.
    pub fn zeros(height: usize, width: usize) -> Self {
        Self { height, width, uv: vec![0.0; height * width * 2], valid: None }
    }

    /// The flow at pixel `(y, x)`.
    pub fn at(&self, y: usize, x: usize) -> (f32, f32) {
        let i = 2 * (y * self.width + x);
        (self.uv[i], self.uv[i + 1])
    }

    /// Per-pixel validity: the mask when there is one (and the flow is finite and known), else
    /// 1 where both components are finite and below [`UNKNOWN_FLOW`] in magnitude.
    pub fn validity(&self) -> Vec<f32> {
        (0..self.height * self.width)
            .map(|i| {
                let (u, v) = (self.uv[2 * i], self.uv[2 * i + 1]);
                let known = u.is_finite() && v.is_finite() && u.abs() < UNKNOWN_FLOW && v.abs() < UNKNOWN_FLOW;
                let m = self.valid.as_ref().map_or(1.0, |m| m[i]);
                if known && m >= 0.5 {
                    1.0
                } else {
                    0.0
                }
            })
            .collect()
    }

    /// The flow as a `(2, height, width)` tensor (planar u then v).
    pub fn to_tensor(&self, device: &Device) -> Result<Tensor> {
        let hw = self.height * self.width;
        let mut planar = vec![0f32; 2 * hw];
        for i in 0..hw {
            planar[i] = self.uv[2 * i];
            planar[hw + i] = self.uv[2 * i + 1];
        }
        Ok(Tensor::from_vec(planar, (2, self.height, self.width), device)?)
    }

    /// A flow from a `(2, height, width)` tensor.
    pub fn from_tensor(t: &Tensor) -> Result<Self> {
        let (c, height, width) = t.dims3()?;
        if c != 2 {
            return Err(candle_core::Error::Msg(format!("a flow tensor has 2 channels, got shape {:?}", t.dims())).into());
        }
        let planar = t.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let hw = height * width;
        let mut uv = vec![0f32; 2 * hw];
        for i in 0..hw {
            uv[2 * i] = planar[i];
            uv[2 * i + 1] = planar[hw + i];
        }
        Ok(Self { height, width, uv, valid: None })
    }

    /// The largest flow magnitude over valid pixels (0 when none is valid).
    pub fn max_magnitude(&self) -> f32 {
        let valid = self.validity();
        (0..self.height * self.width).filter(|&i| valid[i] > 0.5).map(|i| self.uv[2 * i].hypot(self.uv[2 * i + 1])).fold(0.0, f32::max)
    }
}
