//! Fitting problems: coordinates in `[-1, 1]^k` with targets in `[-1, 1]`, for images
//! (representation and generalisation), audio and video; PSNR; turning predictions back into
//! images and waveforms.

use crate::error::{InrError, Result};
use crate::image_io::Image;
use crate::wav::Audio;
use candle_core::{Device, Tensor};
use std::path::Path;

/// `n` points evenly spaced over `[-1, 1]` (both ends included; `[0]` for `n = 1`).
pub fn linspace(n: usize) -> Vec<f32> {
    if n == 1 {
        return vec![0.0];
    }
    (0..n).map(|i| 2.0 * i as f32 / (n - 1) as f32 - 1.0).collect()
}

/// PSNR in dB, `10 log10(peak^2 / mse)`.
pub fn psnr(pred: &[f32], target: &[f32], peak: f64) -> f64 {
    let mse = pred.iter().zip(target).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>() / pred.len().max(1) as f64;
    10.0 * (peak * peak / mse).log10()
}

/// What the samples of a task are.
#[derive(Debug, Clone, PartialEq)]
pub enum Layout {
    /// An image `height x width x channels`.
    Image {
        /// Rows.
        height: usize,
        /// Columns.
        width: usize,
        /// Channels.
        channels: usize,
    },
    /// A mono waveform.
    Audio {
        /// Samples per second.
        rate: u32,
        /// The factor that maps the `[-1, 1]` target back to the file's amplitude.
        peak: f32,
    },
    /// Video frames `frames x height x width x channels`.
    Video {
        /// Frames.
        frames: usize,
        /// Rows.
        height: usize,
        /// Columns.
        width: usize,
        /// Channels.
        channels: usize,
    },
}

impl Layout {
    /// Output channels.
    pub fn channels(&self) -> usize {
        match self {
            Layout::Image { channels, .. } | Layout::Video { channels, .. } => *channels,
            Layout::Audio { .. } => 1,
        }
    }

    /// Coordinate dimension.
    pub fn coord_dim(&self) -> usize {
        match self {
            Layout::Image { .. } => 2,
            Layout::Audio { .. } => 1,
            Layout::Video { .. } => 3,
        }
    }
}

/// Coordinates and targets, row-major `(N, k)` and `(N, C)`.
#[derive(Debug, Clone)]
pub struct Samples {
    /// Coordinates.
    pub coords: Vec<f32>,
    /// Targets in `[-1, 1]`.
    pub targets: Vec<f32>,
    /// How the samples are arranged.
    pub layout: Layout,
}

impl Samples {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.targets.len() / self.layout.channels().max(1)
    }

    /// True if there are no samples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The coordinates as a tensor `(N, k)`.
    pub fn coords_tensor(&self, dev: &Device) -> Result<Tensor> {
        Ok(Tensor::from_vec(self.coords.clone(), (self.len(), self.layout.coord_dim()), dev)?)
    }

    /// The targets as a tensor `(N, C)`.
    pub fn targets_tensor(&self, dev: &Device) -> Result<Tensor> {
        Ok(Tensor::from_vec(self.targets.clone(), (self.len(), self.layout.channels()), dev)?)
    }

    /// PSNR of predictions (model space, `(N, C)` row-major) against the targets: images and
    /// video on `[0, 1]` after clamping (`(y + 1) / 2`), audio on the peak-normalised waveform
    /// (peak 1, unclamped).
    pub fn psnr(&self, pred: &[f32]) -> f64 {
        match self.layout {
            Layout::Audio { .. } => psnr(pred, &self.targets, 1.0),
            _ => {
                let p: Vec<f32> = pred.iter().map(|v| ((v + 1.0) / 2.0).clamp(0.0, 1.0)).collect();
                let t: Vec<f32> = self.targets.iter().map(|v| (v + 1.0) / 2.0).collect();
                psnr(&p, &t, 1.0)
            }
        }
    }

    /// PSNR of each video frame (empty for other layouts).
    pub fn frame_psnr(&self, pred: &[f32]) -> Vec<f64> {
        let Layout::Video { frames, .. } = self.layout else { return Vec::new() };
        let per = self.targets.len() / frames.max(1);
        (0..frames)
            .map(|f| {
                let r = f * per..(f + 1) * per;
                let p: Vec<f32> = pred[r.clone()].iter().map(|v| ((v + 1.0) / 2.0).clamp(0.0, 1.0)).collect();
                let t: Vec<f32> = self.targets[r].iter().map(|v| (v + 1.0) / 2.0).collect();
                psnr(&p, &t, 1.0)
            })
            .collect()
    }
}

/// Image coordinates of a `height x width` grid over `[-1, 1]^2` (channel 0 along the columns,
/// channel 1 along the rows, as the zoo's `meshgrid(..., indexing='xy')`), keeping rows
/// `r0, r0 + step, ...` and columns `c0, c0 + step, ...`.
pub fn image_coords(height: usize, width: usize, r0: usize, c0: usize, step: usize) -> Vec<f32> {
    let (ys, xs) = (linspace(height), linspace(width));
    let mut out = Vec::new();
    for y in (r0..height).step_by(step) {
        for x in (c0..width).step_by(step) {
            out.push(xs[x]);
            out.push(ys[y]);
        }
    }
    out
}

fn to_model(v: &[f32]) -> Vec<f32> {
    v.iter().map(|x| 2.0 * x - 1.0).collect()
}

/// Image representation: every pixel of `img` (resized to `size x size` unless `size` is 0)
/// both trains and tests.
pub fn image_representation(img: &Image, size: usize) -> (Samples, Samples) {
    let img = if size > 0 { img.resized(size, size) } else { img.clone() };
    let s = Samples {
        coords: image_coords(img.height, img.width, 0, 0, 1),
        targets: to_model(&img.data),
        layout: Layout::Image { height: img.height, width: img.width, channels: img.channels },
    };
    (s.clone(), s)
}

/// Image generalisation: train on the even grid `[::2, ::2]` of the full-resolution image, test
/// on the odd, offset grid `[1::2, 1::2]` (coordinates from the full grid).
pub fn image_generalization(img: &Image) -> (Samples, Samples) {
    let part = |o: usize| {
        let sub = img.subgrid(o, o, 2);
        Samples {
            coords: image_coords(img.height, img.width, o, o, 2),
            targets: to_model(&sub.data),
            layout: Layout::Image { height: sub.height, width: sub.width, channels: img.channels },
        }
    };
    (part(0), part(1))
}

/// Audio: the waveform divided by its peak `max |x|`, time coordinates `linspace(-1, 1)`.
pub fn audio_task(a: &Audio, path: &Path) -> Result<(Samples, Samples)> {
    let peak = a.samples.iter().fold(0f32, |m, v| m.max(v.abs()));
    if a.samples.is_empty() || peak == 0.0 {
        return Err(InrError::format(path, "the waveform is empty or silent"));
    }
    let s = Samples { coords: linspace(a.samples.len()), targets: a.samples.iter().map(|v| v / peak).collect(), layout: Layout::Audio { rate: a.rate, peak } };
    Ok((s.clone(), s))
}

/// Video from a folder of frames (`*.png`, sorted by name, all the same size and channels):
/// coordinates `(t, y, x)` over `[-1, 1]^3`.
pub fn video_task(dir: &Path, max_frames: usize) -> Result<(Samples, Samples)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| InrError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().and_then(|e| e.to_str()).is_some_and(|e| e.eq_ignore_ascii_case("png")))
        .collect();
    files.sort();
    if max_frames > 0 {
        files.truncate(max_frames);
    }
    if files.is_empty() {
        return Err(InrError::format(dir, "no .png frames in the folder"));
    }
    let first = Image::read(&files[0])?;
    let (h, w, c) = (first.height, first.width, first.channels);
    let mut targets = to_model(&first.data);
    for f in &files[1..] {
        let img = Image::read(f)?;
        if (img.height, img.width, img.channels) != (h, w, c) {
            return Err(InrError::format(f, format!("frame is {}x{}x{}, the first frame is {h}x{w}x{c}", img.height, img.width, img.channels)));
        }
        targets.extend(to_model(&img.data));
    }
    let t = files.len();
    let (ts, ys, xs) = (linspace(t), linspace(h), linspace(w));
    let mut coords = Vec::with_capacity(t * h * w * 3);
    for tv in &ts {
        for yv in &ys {
            for xv in &xs {
                coords.extend_from_slice(&[*tv, *yv, *xv]);
            }
        }
    }
    let s = Samples { coords, targets, layout: Layout::Video { frames: t, height: h, width: w, channels: c } };
    Ok((s.clone(), s))
}

/// Model-space predictions of an image layout as an [`Image`] in `[0, 1]`.
pub fn to_image(pred: &[f32], layout: &Layout) -> Option<Image> {
    let Layout::Image { height, width, channels } = *layout else { return None };
    Some(Image { height, width, channels, data: pred.iter().map(|v| ((v + 1.0) / 2.0).clamp(0.0, 1.0)).collect() })
}

/// Frame `f` of a video layout as an [`Image`].
pub fn video_frame(pred: &[f32], layout: &Layout, f: usize) -> Option<Image> {
    let Layout::Video { height, width, channels, .. } = *layout else { return None };
    let per = height * width * channels;
    Some(Image { height, width, channels, data: pred[f * per..(f + 1) * per].iter().map(|v| ((v + 1.0) / 2.0).clamp(0.0, 1.0)).collect() })
}

/// Model-space predictions of an audio layout as a waveform at the file's amplitude.
pub fn to_audio(pred: &[f32], layout: &Layout) -> Option<Audio> {
    let Layout::Audio { rate, peak } = *layout else { return None };
    Some(Audio { rate, samples: pred.iter().map(|v| v * peak).collect() })
}
