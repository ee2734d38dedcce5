//! Video frames as RGB: PNG or JPEG files (grey ones replicated to three channels), read
//! with deq-train's size-limited image decoder.

use std::path::Path;

use candle_core::{Device, Tensor};

use crate::error::{FlowError, Result};

/// Largest width or height decoded (deq-train's shared decoder).
pub use deq_train::data::image_decode::MAX_SIDE;

/// Decodes an image file with deq-train's size-limited decoder; errors name `path`.
pub(crate) fn decode(path: &Path, bytes: &[u8]) -> Result<image::DynamicImage> {
    deq_train::data::decode_image(bytes).map_err(|m| FlowError::format(path, m))
}

/// An 8-bit RGB frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
    /// `height * width * 3` bytes, row-major, RGB interleaved.
    pub rgb: Vec<u8>,
}

impl Frame {
    /// Reads a PNG or JPEG file; errors name the file.
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| FlowError::io(path, e))?;
        let img = decode(path, &bytes)?.to_rgb8();
        let (width, height) = (img.width() as usize, img.height() as usize);
        if width == 0 || height == 0 {
            return Err(FlowError::format(path, "image has no pixels"));
        }
        Ok(Self { height, width, rgb: img.into_raw() })
    }

    /// The frame as a `(3, height, width)` f32 tensor with values in `[0, 255]` (RAFT's input
    /// convention; the model maps it to `[-1, 1]`).
    pub fn to_tensor(&self, device: &Device) -> Result<Tensor> {
        let hw = self.height * self.width;
        let mut planar = vec![0f32; 3 * hw];
        for (i, p) in self.rgb.chunks_exact(3).enumerate() {
            for c in 0..3 {
                planar[c * hw + i] = p[c] as f32;
            }
        }
        Ok(Tensor::from_vec(planar, (3, self.height, self.width), device)?)
    }

    /// The frame as floats in `[0, 255]`, row-major `(height, width, 3)`.
    pub fn to_f32(&self) -> Vec<f32> {
        self.rgb.iter().map(|&v| v as f32).collect()
    }

    /// Writes the frame as a PNG, atomically.
    pub fn write_png(&self, path: &Path) -> Result<()> {
        write_rgb_png(path, self.width, self.height, &self.rgb)
    }
}

/// Writes `height * width * 3` RGB bytes as a PNG, atomically.
pub fn write_rgb_png(path: &Path, width: usize, height: usize, rgb: &[u8]) -> Result<()> {
    Ok(deq_train::data::write_png(path, width, height, 3, rgb)?)
}
