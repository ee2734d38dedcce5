//! PNG (and JPEG) images as `f32` arrays in `[0, 1]`, row-major `(height, width, channels)`,
//! with 1 (grey) or 3 (RGB) channels; box-filter downsampling; PNG writing.

use crate::error::{InrError, Result};
use std::path::Path;

/// An image with values in `[0, 1]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
    /// 1 (grey) or 3 (RGB).
    pub channels: usize,
    /// `height * width * channels` values, row-major, channels last.
    pub data: Vec<f32>,
}

impl Image {
    /// Reads an image file. Grey(+alpha) files give 1 channel, colour files 3 (alpha is
    /// dropped); 16-bit files are scaled to `[0, 1]` like 8-bit ones. Errors name the file.
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| InrError::io(path, e))?;
        let img = deq_train::data::decode_image(&bytes).map_err(|m| InrError::format(path, format!("not a readable image: {m}")))?;
        let (width, height) = (img.width() as usize, img.height() as usize);
        if width == 0 || height == 0 {
            return Err(InrError::format(path, "image has no pixels"));
        }
        let grey = matches!(img.color(), image::ColorType::L8 | image::ColorType::La8 | image::ColorType::L16 | image::ColorType::La16);
        let (channels, data) = if grey {
            (1, img.to_luma32f().into_raw())
        } else {
            (3, img.to_rgb32f().into_raw())
        };
        Ok(Self { height, width, channels, data })
    }

    /// Writes an 8-bit PNG (values clamped to `[0, 1]`), atomically (temporary file + rename).
    pub fn write_png(&self, path: &Path) -> Result<()> {
        let bytes: Vec<u8> = self.data.iter().map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8).collect();
        let color = if self.channels == 1 { image::ExtendedColorType::L8 } else { image::ExtendedColorType::Rgb8 };
        let tmp = path.with_extension("png.tmp");
        let file = std::fs::File::create(&tmp).map_err(|e| InrError::io(&tmp, e))?;
        let enc = image::codecs::png::PngEncoder::new(std::io::BufWriter::new(file));
        image::ImageEncoder::write_image(enc, &bytes, self.width as u32, self.height as u32, color).map_err(|e| InrError::format(&tmp, format!("writing PNG: {e}")))?;
        std::fs::rename(&tmp, path).map_err(|e| InrError::io(path, e))
    }

    /// The image resized to `height x width`: box-filter averaging when both factors are
    /// integers (the usual 512 -> 256), bilinear sampling otherwise.
    pub fn resized(&self, height: usize, width: usize) -> Self {
        if height == self.height && width == self.width {
            return self.clone();
        }
        let c = self.channels;
        let mut data = vec![0f32; height * width * c];
        if self.height % height == 0 && self.width % width == 0 {
            let (fy, fx) = (self.height / height, self.width / width);
            let norm = 1.0 / (fy * fx) as f32;
            for y in 0..height {
                for x in 0..width {
                    for dy in 0..fy {
                        for dx in 0..fx {
                            let src = ((y * fy + dy) * self.width + x * fx + dx) * c;
                            for ch in 0..c {
                                data[(y * width + x) * c + ch] += self.data[src + ch] * norm;
                            }
                        }
                    }
                }
            }
        } else {
            for y in 0..height {
                let sy = ((y as f32 + 0.5) * self.height as f32 / height as f32 - 0.5).clamp(0.0, (self.height - 1) as f32);
                let (y0, ty) = (sy.floor() as usize, sy - sy.floor());
                let y1 = (y0 + 1).min(self.height - 1);
                for x in 0..width {
                    let sx = ((x as f32 + 0.5) * self.width as f32 / width as f32 - 0.5).clamp(0.0, (self.width - 1) as f32);
                    let (x0, tx) = (sx.floor() as usize, sx - sx.floor());
                    let x1 = (x0 + 1).min(self.width - 1);
                    for ch in 0..c {
                        let p = |yy: usize, xx: usize| self.data[(yy * self.width + xx) * c + ch];
                        data[(y * width + x) * c + ch] = (1.0 - ty) * ((1.0 - tx) * p(y0, x0) + tx * p(y0, x1)) + ty * ((1.0 - tx) * p(y1, x0) + tx * p(y1, x1));
                    }
                }
            }
        }
        Self { height, width, channels: c, data }
    }

    /// The pixels at rows `r0, r0 + step, ...` and columns `c0, c0 + step, ...`.
    pub fn subgrid(&self, r0: usize, c0: usize, step: usize) -> Self {
        let (h, w, c) = ((self.height - r0).div_ceil(step), (self.width - c0).div_ceil(step), self.channels);
        let mut data = Vec::with_capacity(h * w * c);
        for y in 0..h {
            for x in 0..w {
                let s = ((r0 + y * step) * self.width + c0 + x * step) * c;
                data.extend_from_slice(&self.data[s..s + c]);
            }
        }
        Self { height: h, width: w, channels: c, data }
    }

    /// `|a - b|` per pixel, averaged over channels and scaled by `gain` (an error map to view).
    pub fn error_map(&self, other: &Image, gain: f32) -> Self {
        let c = self.channels;
        let data = self.data.chunks(c).zip(other.data.chunks(c)).map(|(a, b)| gain * a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f32>() / c as f32).collect();
        Self { height: self.height, width: self.width, channels: 1, data }
    }
}
