//! RAFT's training augmentations, on interleaved RGB frames in `[0, 255]` and flow fields.
//!
//! Dense ground truth (`FlowAugmentor`): photometric jitter (brightness, contrast, saturation
//! 0.4, hue 0.5/pi, in random order; both frames alike, or each its own with probability 0.2),
//! an eraser (probability 0.5: one or two rectangles of 50-99 pixels in frame 2 filled with its
//! mean colour), then a spatial transform: a log2 scale in `[min_scale, max_scale]` stretched
//! per axis by up to 2^0.2 (probability 0.8) and at least large enough for the crop, applied
//! with probability 0.8 (bilinear resize; the flow is scaled with the frames), horizontal (0.5)
//! and vertical (0.1) flips, and a random crop.
//!
//! Sparse ground truth (KITTI, HD1K; `SparseFlowAugmentor`): jitter 0.3 with hue 0.3/pi, always
//! symmetric; the same eraser; one isotropic scale, valid pixels moved to their nearest resized
//! position (no interpolation across invalid pixels); horizontal flips only; crops that may
//! reach 20 rows below and 50 columns beyond the frame before being clipped inside it.
//!
//! PIL rounds to 8 bits after each photometric step; here the values stay floats, clamped to
//! `[0, 255]` after each step.

use deq_core::rng::DeqRng;
use serde::{Deserialize, Serialize};

use crate::flow::Flow;

/// An interleaved RGB frame in `[0, 255]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Rgb {
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
    /// `height * width * 3` values.
    pub data: Vec<f32>,
}

/// A training sample before batching.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Frame 1.
    pub img1: Rgb,
    /// Frame 2.
    pub img2: Rgb,
    /// Ground-truth flow; its `valid` mask is set for sparse data.
    pub flow: Flow,
}

/// Spatial settings of the augmentation (the zoo's per-stage values).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AugmentConfig {
    /// Crop `[height, width]`.
    pub crop: [usize; 2],
    /// Smallest log2 scale (chairs -0.1, things -0.4).
    pub min_scale: f64,
    /// Largest log2 scale (chairs 1.0, things 0.8).
    pub max_scale: f64,
    /// Random flips.
    #[serde(default = "yes")]
    pub flip: bool,
    /// Photometric jitter and the eraser.
    #[serde(default = "yes")]
    pub photometric: bool,
}

fn yes() -> bool {
    true
}

impl AugmentConfig {
    /// Checks the settings; the message names the key.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.crop[0] < 8 || self.crop[1] < 8 || self.crop[0] % 8 != 0 || self.crop[1] % 8 != 0 {
            return Err(format!("data.augment.crop = {:?} must be multiples of 8, at least 8", self.crop));
        }
        if !(self.min_scale.is_finite() && self.max_scale.is_finite() && self.min_scale <= self.max_scale && self.max_scale.abs() <= 4.0 && self.min_scale.abs() <= 4.0) {
            return Err(format!("data.augment.min_scale/max_scale = {}/{} must be an ordered range within [-4, 4]", self.min_scale, self.max_scale));
        }
        Ok(())
    }
}

fn uniform(rng: &mut DeqRng, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * rng.uniform()
}

fn below(rng: &mut DeqRng, n: usize) -> usize {
    (rng.next_u64() % n.max(1) as u64) as usize
}

/// Parameters of one photometric jitter: factors and the order of the four steps.
#[derive(Debug, Clone, Copy)]
struct Jitter {
    brightness: f32,
    contrast: f32,
    saturation: f32,
    hue: f32,
    order: [usize; 4],
}

impl Jitter {
    fn draw(rng: &mut DeqRng, strength: f64, hue: f64) -> Self {
        let mut order = [0, 1, 2, 3];
        for i in (1..4).rev() {
            order.swap(i, below(rng, i + 1));
        }
        let f = |rng: &mut DeqRng| uniform(rng, 1.0 - strength, 1.0 + strength) as f32;
        Self { brightness: f(rng), contrast: f(rng), saturation: f(rng), hue: uniform(rng, -hue, hue) as f32, order }
    }

    /// Applies the jitter to several frames at once (one contrast mean over all of them, as
    /// RAFT jitters the two frames stacked into one image).
    fn apply(&self, frames: &mut [&mut Rgb]) {
        let grey = |p: &[f32]| 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2];
        for step in self.order {
            match step {
                0 => frames.iter_mut().for_each(|f| f.data.iter_mut().for_each(|v| *v = (*v * self.brightness).clamp(0.0, 255.0))),
                1 => {
                    let (mut s, mut n) = (0f64, 0usize);
                    for f in frames.iter() {
                        for p in f.data.chunks_exact(3) {
                            s += grey(p) as f64;
                            n += 1;
                        }
                    }
                    let mean = (s / n.max(1) as f64) as f32;
                    frames.iter_mut().for_each(|f| f.data.iter_mut().for_each(|v| *v = (*v * self.contrast + mean * (1.0 - self.contrast)).clamp(0.0, 255.0)));
                }
                2 => frames.iter_mut().for_each(|f| {
                    for p in f.data.chunks_exact_mut(3) {
                        let g = grey(p);
                        for v in p.iter_mut() {
                            *v = (*v * self.saturation + g * (1.0 - self.saturation)).clamp(0.0, 255.0);
                        }
                    }
                }),
                _ => frames.iter_mut().for_each(|f| {
                    for p in f.data.chunks_exact_mut(3) {
                        let rgb = shift_hue([p[0] / 255.0, p[1] / 255.0, p[2] / 255.0], self.hue);
                        for (v, c) in p.iter_mut().zip(rgb) {
                            *v = (c * 255.0).clamp(0.0, 255.0);
                        }
                    }
                }),
            }
        }
    }
}

/// Rotates the hue of an RGB colour in `[0, 1]` by `h` turns (HSV round trip).
fn shift_hue(c: [f32; 3], h: f32) -> [f32; 3] {
    let (r, g, b) = (c[0], c[1], c[2]);
    let max = r.max(g).max(b);
    let min = r.min(g).min(b);
    let d = max - min;
    if d <= 0.0 {
        return c;
    }
    let s = d / max;
    let mut hue = if max == r {
        (g - b) / d
    } else if max == g {
        2.0 + (b - r) / d
    } else {
        4.0 + (r - g) / d
    } / 6.0;
    hue = (hue + h).rem_euclid(1.0);
    let v = max;
    let i = (hue * 6.0).floor();
    let f = hue * 6.0 - i;
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    match (i as i32).rem_euclid(6) {
        0 => [v, t, p],
        1 => [q, v, p],
        2 => [p, v, t],
        3 => [p, q, v],
        4 => [t, p, v],
        _ => [v, p, q],
    }
}

/// The eraser: with probability 0.5, one or two rectangles of frame 2 take its mean colour.
fn erase(img2: &mut Rgb, rng: &mut DeqRng) {
    if rng.uniform() >= 0.5 {
        return;
    }
    let (h, w) = (img2.height, img2.width);
    let mut mean = [0f64; 3];
    for p in img2.data.chunks_exact(3) {
        for c in 0..3 {
            mean[c] += p[c] as f64;
        }
    }
    let mean = mean.map(|m| (m / (h * w).max(1) as f64).floor() as f32);
    for _ in 0..1 + below(rng, 2) {
        let (x0, y0) = (below(rng, w), below(rng, h));
        let (dx, dy) = (50 + below(rng, 50), 50 + below(rng, 50));
        for y in y0..(y0 + dy).min(h) {
            for x in x0..(x0 + dx).min(w) {
                img2.data[(y * w + x) * 3..][..3].copy_from_slice(&mean);
            }
        }
    }
}

/// Bilinear resize of interleaved `c`-channel data with half-pixel centres (OpenCV's
/// `INTER_LINEAR`).
fn resize(data: &[f32], h: usize, w: usize, c: usize, oh: usize, ow: usize) -> Vec<f32> {
    let mut out = vec![0f32; oh * ow * c];
    let (sy, sx) = (h as f64 / oh as f64, w as f64 / ow as f64);
    for y in 0..oh {
        let fy = ((y as f64 + 0.5) * sy - 0.5).clamp(0.0, (h - 1) as f64);
        let (y0, ty) = (fy.floor() as usize, (fy - fy.floor()) as f32);
        let y1 = (y0 + 1).min(h - 1);
        for x in 0..ow {
            let fx = ((x as f64 + 0.5) * sx - 0.5).clamp(0.0, (w - 1) as f64);
            let (x0, tx) = (fx.floor() as usize, (fx - fx.floor()) as f32);
            let x1 = (x0 + 1).min(w - 1);
            for ch in 0..c {
                let p = |yy: usize, xx: usize| data[(yy * w + xx) * c + ch];
                out[(y * ow + x) * c + ch] = (p(y0, x0) * (1.0 - tx) + p(y0, x1) * tx) * (1.0 - ty) + (p(y1, x0) * (1.0 - tx) + p(y1, x1) * tx) * ty;
            }
        }
    }
    out
}

fn resize_rgb(img: &Rgb, oh: usize, ow: usize) -> Rgb {
    // Clamped: interpolating 255s can round to 255.00002.
    let data = resize(&img.data, img.height, img.width, 3, oh, ow).into_iter().map(|v| v.clamp(0.0, 255.0)).collect();
    Rgb { height: oh, width: ow, data }
}

/// Sparse flow resized by moving each valid pixel to its nearest new position (RAFT's
/// `resize_sparse_flow_map`: positions rounded half to even, row 0 and column 0 excluded).
fn resize_sparse(flow: &Flow, fx: f64, fy: f64) -> Flow {
    let (oh, ow) = (((flow.height as f64) * fy).round() as usize, ((flow.width as f64) * fx).round() as usize);
    let valid = flow.validity();
    let mut uv = vec![0f32; oh * ow * 2];
    let mut mask = vec![0f32; oh * ow];
    for y in 0..flow.height {
        for x in 0..flow.width {
            let i = y * flow.width + x;
            if valid[i] < 1.0 {
                continue;
            }
            let (xx, yy) = ((x as f64 * fx).round_ties_even() as i64, (y as f64 * fy).round_ties_even() as i64);
            if xx > 0 && yy > 0 && (xx as usize) < ow && (yy as usize) < oh {
                let j = yy as usize * ow + xx as usize;
                uv[2 * j] = (flow.uv[2 * i] as f64 * fx) as f32;
                uv[2 * j + 1] = (flow.uv[2 * i + 1] as f64 * fy) as f32;
                mask[j] = 1.0;
            }
        }
    }
    Flow { height: oh, width: ow, uv, valid: Some(mask) }
}

fn flip(s: &mut Sample, horizontal: bool) {
    let (h, w) = (s.img1.height, s.img1.width);
    let map = |y: usize, x: usize| if horizontal { (y, w - 1 - x) } else { (h - 1 - y, x) };
    let flip_c = |data: &[f32], c: usize| -> Vec<f32> {
        let mut out = vec![0f32; data.len()];
        for y in 0..h {
            for x in 0..w {
                let (sy, sx) = map(y, x);
                out[(y * w + x) * c..][..c].copy_from_slice(&data[(sy * w + sx) * c..][..c]);
            }
        }
        out
    };
    s.img1.data = flip_c(&s.img1.data, 3);
    s.img2.data = flip_c(&s.img2.data, 3);
    let mut uv = flip_c(&s.flow.uv, 2);
    let comp = if horizontal { 0 } else { 1 };
    for p in uv.chunks_exact_mut(2) {
        p[comp] = -p[comp];
    }
    s.flow.uv = uv;
    if let Some(m) = &s.flow.valid {
        s.flow.valid = Some(flip_c(m, 1));
    }
}

fn crop(s: &mut Sample, y0: usize, x0: usize, ch: usize, cw: usize) {
    let w = s.img1.width;
    let cut = |data: &[f32], c: usize| -> Vec<f32> { (0..ch).flat_map(|y| data[((y0 + y) * w + x0) * c..][..cw * c].iter().copied()).collect() };
    s.img1 = Rgb { height: ch, width: cw, data: cut(&s.img1.data, 3) };
    s.img2 = Rgb { height: ch, width: cw, data: cut(&s.img2.data, 3) };
    let valid = s.flow.valid.as_ref().map(|m| cut(m, 1));
    s.flow = Flow { height: ch, width: cw, uv: cut(&s.flow.uv, 2), valid };
}

/// Augments a dense sample (RAFT's `FlowAugmentor`); the frames must be at least the crop.
pub fn augment_dense(mut s: Sample, cfg: &AugmentConfig, rng: &mut DeqRng) -> std::result::Result<Sample, String> {
    let [ch, cw] = cfg.crop;
    if cfg.photometric {
        if rng.uniform() < 0.2 {
            let j1 = Jitter::draw(rng, 0.4, 0.5 / 3.14);
            let j2 = Jitter::draw(rng, 0.4, 0.5 / 3.14);
            j1.apply(&mut [&mut s.img1]);
            j2.apply(&mut [&mut s.img2]);
        } else {
            Jitter::draw(rng, 0.4, 0.5 / 3.14).apply(&mut [&mut s.img1, &mut s.img2]);
        }
        erase(&mut s.img2, rng);
    }
    let (h, w) = (s.img1.height as f64, s.img1.width as f64);
    let floor = ((ch + 8) as f64 / h).max((cw + 8) as f64 / w);
    let scale = 2f64.powf(uniform(rng, cfg.min_scale, cfg.max_scale));
    let (mut sx, mut sy) = (scale, scale);
    if rng.uniform() < 0.8 {
        sx *= 2f64.powf(uniform(rng, -0.2, 0.2));
        sy *= 2f64.powf(uniform(rng, -0.2, 0.2));
    }
    let (sx, sy) = (sx.max(floor), sy.max(floor));
    if rng.uniform() < 0.8 {
        let (oh, ow) = ((h * sy).round() as usize, (w * sx).round() as usize);
        s.img1 = resize_rgb(&s.img1, oh, ow);
        s.img2 = resize_rgb(&s.img2, oh, ow);
        let mut uv = resize(&s.flow.uv, s.flow.height, s.flow.width, 2, oh, ow);
        for p in uv.chunks_exact_mut(2) {
            p[0] *= sx as f32;
            p[1] *= sy as f32;
        }
        s.flow = Flow { height: oh, width: ow, uv, valid: None };
    }
    if cfg.flip {
        if rng.uniform() < 0.5 {
            flip(&mut s, true);
        }
        if rng.uniform() < 0.1 {
            flip(&mut s, false);
        }
    }
    let (h, w) = (s.img1.height, s.img1.width);
    if h < ch || w < cw {
        return Err(format!("a {h}x{w} sample is smaller than the {ch}x{cw} crop"));
    }
    let (y0, x0) = (below(rng, h - ch + 1), below(rng, w - cw + 1));
    crop(&mut s, y0, x0, ch, cw);
    Ok(s)
}

/// Augments a sparse sample (RAFT's `SparseFlowAugmentor`).
pub fn augment_sparse(mut s: Sample, cfg: &AugmentConfig, rng: &mut DeqRng) -> std::result::Result<Sample, String> {
    let [ch, cw] = cfg.crop;
    if s.flow.valid.is_none() {
        s.flow.valid = Some(s.flow.validity());
    }
    if cfg.photometric {
        Jitter::draw(rng, 0.3, 0.3 / 3.14).apply(&mut [&mut s.img1, &mut s.img2]);
        erase(&mut s.img2, rng);
    }
    let (h, w) = (s.img1.height as f64, s.img1.width as f64);
    let floor = ((ch + 1) as f64 / h).max((cw + 1) as f64 / w);
    let scale = 2f64.powf(uniform(rng, cfg.min_scale, cfg.max_scale)).max(floor);
    if rng.uniform() < 0.8 {
        let (oh, ow) = ((h * scale).round() as usize, (w * scale).round() as usize);
        s.img1 = resize_rgb(&s.img1, oh, ow);
        s.img2 = resize_rgb(&s.img2, oh, ow);
        s.flow = resize_sparse(&s.flow, scale, scale);
    }
    if cfg.flip && rng.uniform() < 0.5 {
        flip(&mut s, true);
    }
    let (h, w) = (s.img1.height, s.img1.width);
    if h < ch || w < cw {
        return Err(format!("a {h}x{w} sample is smaller than the {ch}x{cw} crop"));
    }
    let y0 = below(rng, h - ch + 20).min(h - ch);
    let x0 = (below(rng, w - cw + 100) as i64 - 50).clamp(0, (w - cw) as i64) as usize;
    crop(&mut s, y0, x0, ch, cw);
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(h: usize, w: usize, sparse: bool) -> Sample {
        let img = |k: f32| Rgb { height: h, width: w, data: (0..h * w * 3).map(|i| (i as f32 * 0.37 + k).sin() * 100.0 + 128.0).collect() };
        // A flow that encodes each pixel's position, to follow pixels through the transforms.
        let uv = (0..h * w).flat_map(|i| [(i % w) as f32 * 0.1, (i / w) as f32 * 0.1 + 1.0]).collect();
        let valid = sparse.then(|| (0..h * w).map(|i| (i % 3 == 0) as u8 as f32).collect());
        Sample { img1: img(0.0), img2: img(1.0), flow: Flow { height: h, width: w, uv, valid } }
    }

    #[test]
    fn dense_and_sparse_outputs_have_the_crop_and_stay_in_range() {
        let cfg = AugmentConfig { crop: [64, 96], min_scale: -0.2, max_scale: 0.5, flip: true, photometric: true };
        for seed in 0..20 {
            let mut rng = DeqRng::new(seed);
            let d = augment_dense(sample(100, 140, false), &cfg, &mut rng).unwrap();
            assert_eq!((d.img1.height, d.img1.width, d.flow.height, d.flow.width), (64, 96, 64, 96));
            let bad: Vec<&f32> = d.img1.data.iter().chain(&d.img2.data).filter(|v| !(0.0..=255.0).contains(*v)).collect();
            assert!(bad.is_empty(), "seed {seed}: {:?}", &bad[..bad.len().min(5)]);
            let s = augment_sparse(sample(100, 140, true), &cfg, &mut DeqRng::new(seed)).unwrap();
            assert_eq!((s.img2.height, s.img2.width), (64, 96));
            let valid = s.flow.valid.as_ref().unwrap();
            assert_eq!(valid.len(), 64 * 96);
            // Invalid pixels carry no flow; some valid ones survive.
            assert!(valid.iter().zip(s.flow.uv.chunks_exact(2)).all(|(m, p)| *m == 1.0 || (p[0] == 0.0 && p[1] == 0.0)));
            assert!(valid.iter().sum::<f32>() > 100.0);
        }
        let small = augment_dense(sample(20, 30, false), &AugmentConfig { min_scale: -1.0, max_scale: -1.0, ..cfg.clone() }, &mut DeqRng::new(0));
        // The floor scale enlarges small frames enough for the crop.
        assert!(small.is_ok());
    }

    #[test]
    fn spatial_transforms_scale_and_flip_the_flow_with_the_frames() {
        // No photometric change, no flips: a pure 2x zoom (log2 scale 1) doubles the flow.
        let cfg = AugmentConfig { crop: [32, 32], min_scale: 1.0, max_scale: 1.0, flip: false, photometric: false };
        let mut zoomed = 0;
        for seed in 0..30 {
            let s = augment_dense(sample(40, 40, false), &cfg, &mut DeqRng::new(seed)).unwrap();
            // The v component was 0.1 y + 1 >= 1 before; zoomed frames carry it times sy.
            let vmin = s.flow.uv.chunks_exact(2).map(|p| p[1]).fold(f32::MAX, f32::min);
            if vmin > 1.5 {
                zoomed += 1;
            }
        }
        assert!(zoomed > 15, "{zoomed} of 30 were resized (expected ~24)");
        let mut s = sample(4, 5, false);
        let before = s.flow.clone();
        flip(&mut s, true);
        assert_eq!(s.flow.at(1, 0), (-before.at(1, 4).0, before.at(1, 4).1));
        flip(&mut s, false);
        assert_eq!(s.flow.at(0, 0), (-before.at(3, 4).0, -before.at(3, 4).1));
    }

    #[test]
    fn sparse_resizing_moves_valid_pixels_without_mixing() {
        let f = Flow { height: 2, width: 3, uv: vec![1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 4.0, 4.0, 5.0, 5.0, 6.0, 6.0], valid: Some(vec![1.0, 1.0, 0.0, 1.0, 1.0, 1.0]) };
        let r = resize_sparse(&f, 2.0, 2.0);
        assert_eq!((r.height, r.width), (4, 6));
        let m = r.valid.as_ref().unwrap();
        // Pixel (1, 1) goes to (2, 2) with flow x2; row 0 and column 0 are dropped.
        assert_eq!(m[2 * 6 + 2], 1.0);
        assert_eq!(r.at(2, 2), (10.0, 10.0));
        assert_eq!(m.iter().sum::<f32>(), 2.0);
    }

    #[test]
    fn hue_rotation_round_trips_and_keeps_greys() {
        let c = [0.8, 0.3, 0.1];
        let back = shift_hue(shift_hue(c, 0.13), -0.13);
        assert!(c.iter().zip(back).all(|(a, b)| (a - b).abs() < 1e-5));
        assert_eq!(shift_hue([0.5, 0.5, 0.5], 0.3), [0.5, 0.5, 0.5]);
        // A third of a turn maps red to green.
        let g = shift_hue([1.0, 0.0, 0.0], 1.0 / 3.0);
        assert!(g[1] > 0.99 && g[0] < 0.01 && g[2] < 0.01, "{g:?}");
    }
}
