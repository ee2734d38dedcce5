//! Augmentations on one CHW sample. Every random choice draws from a
//! [`DeqRng`](deq_core::rng::DeqRng), so a run is reproducible from its seed.
//!
//! Shape arguments are `c, h, w` (channels, height, width); the slices must hold `c * h * w`
//! values (the functions panic otherwise: that is a programming error, not bad data).

use deq_core::rng::DeqRng;

/// A uniform integer in `0..n` (`n > 0`).
fn below(rng: &mut DeqRng, n: usize) -> usize {
    ((rng.uniform() * n as f64) as usize).min(n - 1)
}

fn check(len: usize, c: usize, h: usize, w: usize) {
    assert_eq!(len, c * h * w, "sample has {len} values, expected c*h*w = {c}*{h}*{w}");
}

/// Bytes to `f32` in `[0, 1]` (each byte divided by 255).
pub fn to_f32(img: &[u8]) -> Vec<f32> {
    img.iter().map(|&b| b as f32 / 255.0).collect()
}

/// In place, per channel: `x = (x - mean[ch]) / std[ch]`.
///
/// # Panics
/// If `mean` or `std` does not have `c` entries or `img` does not hold `c * h * w` values.
pub fn normalize(img: &mut [f32], c: usize, h: usize, w: usize, mean: &[f32], std: &[f32]) {
    check(img.len(), c, h, w);
    assert!(mean.len() == c && std.len() == c, "normalize: {c} channels but {} means and {} stds", mean.len(), std.len());
    for (ch, plane) in img.chunks_exact_mut(h * w).enumerate() {
        let (m, inv) = (mean[ch], 1.0 / std[ch]);
        for x in plane {
            *x = (*x - m) * inv;
        }
    }
}

/// torchvision's `RandomCrop(size = (h, w), padding = pad)`: pads every side with `pad` zeros,
/// then crops an `h x w` window at a uniformly random offset. `pad = 0` returns a copy.
pub fn random_crop_with_padding(img: &[f32], c: usize, h: usize, w: usize, pad: usize, rng: &mut DeqRng) -> Vec<f32> {
    check(img.len(), c, h, w);
    if pad == 0 {
        return img.to_vec();
    }
    let top = below(rng, 2 * pad + 1) as isize - pad as isize;
    let left = below(rng, 2 * pad + 1) as isize - pad as isize;
    let mut out = vec![0f32; c * h * w];
    for ch in 0..c {
        for y in 0..h {
            let sy = y as isize + top;
            if sy < 0 || sy >= h as isize {
                continue;
            }
            for x in 0..w {
                let sx = x as isize + left;
                if sx >= 0 && sx < w as isize {
                    out[(ch * h + y) * w + x] = img[(ch * h + sy as usize) * w + sx as usize];
                }
            }
        }
    }
    out
}

/// Mirrors the sample left-right, in place.
pub fn flip_horizontal(img: &mut [f32], c: usize, h: usize, w: usize) {
    check(img.len(), c, h, w);
    for row in img.chunks_exact_mut(w) {
        row.reverse();
    }
}

/// With probability `p` (torchvision's default is 0.5) mirrors the sample left-right in place;
/// returns whether it did. Always draws one number from `rng`.
pub fn horizontal_flip(img: &mut [f32], c: usize, h: usize, w: usize, rng: &mut DeqRng, p: f64) -> bool {
    let flip = rng.uniform() < p;
    if flip {
        flip_horizontal(img, c, h, w);
    }
    flip
}

/// The `(top, left, height, width)` window `RandomResizedCrop` would pick for an `h x w`
/// image: torchvision's `get_params` (10 attempts at an area fraction from `scale` and a
/// log-uniform aspect ratio from `ratio`, then a centre crop clamped to `ratio`).
pub fn random_resized_crop_params(h: usize, w: usize, scale: (f64, f64), ratio: (f64, f64), rng: &mut DeqRng) -> (usize, usize, usize, usize) {
    let area = (h * w) as f64;
    let (lr0, lr1) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target = area * (scale.0 + (scale.1 - scale.0) * rng.uniform());
        let aspect = (lr0 + (lr1 - lr0) * rng.uniform()).exp();
        let cw = (target * aspect).sqrt().round() as usize;
        let ch = (target / aspect).sqrt().round() as usize;
        if cw > 0 && cw <= w && ch > 0 && ch <= h {
            let top = below(rng, h - ch + 1);
            let left = below(rng, w - cw + 1);
            return (top, left, ch, cw);
        }
    }
    let in_ratio = w as f64 / h as f64;
    let (ch, cw) = if in_ratio < ratio.0.min(ratio.1) {
        (((w as f64) / ratio.0.min(ratio.1)).round() as usize, w)
    } else if in_ratio > ratio.0.max(ratio.1) {
        (h, ((h as f64) * ratio.0.max(ratio.1)).round() as usize)
    } else {
        (h, w)
    };
    let (ch, cw) = (ch.clamp(1, h), cw.clamp(1, w));
    ((h - ch) / 2, (w - cw) / 2, ch, cw)
}

/// Bilinear resampling of the window `(top, left, ch, cw)` of a CHW sample to
/// `out_h x out_w` (half-pixel centres, i.e. `align_corners = false`, edge-clamped).
#[allow(clippy::too_many_arguments)]
pub fn resize_window_bilinear(
    img: &[f32],
    c: usize,
    h: usize,
    w: usize,
    (top, left, ch, cw): (usize, usize, usize, usize),
    out_h: usize,
    out_w: usize,
) -> Vec<f32> {
    check(img.len(), c, h, w);
    assert!(top + ch <= h && left + cw <= w && ch > 0 && cw > 0, "window out of the image");
    let sy = ch as f32 / out_h as f32;
    let sx = cw as f32 / out_w as f32;
    // Precomputed source rows/cols and weights.
    let taps = |n_out: usize, scale: f32, n_in: usize, off: usize| -> Vec<(usize, usize, f32)> {
        (0..n_out)
            .map(|o| {
                let s = ((o as f32 + 0.5) * scale - 0.5).max(0.0);
                let i0 = (s.floor() as usize).min(n_in - 1);
                let i1 = (i0 + 1).min(n_in - 1);
                (off + i0, off + i1, s - i0 as f32)
            })
            .collect()
    };
    let ys = taps(out_h, sy, ch, top);
    let xs = taps(out_w, sx, cw, left);
    let mut out = vec![0f32; c * out_h * out_w];
    for k in 0..c {
        let plane = &img[k * h * w..(k + 1) * h * w];
        let dst = &mut out[k * out_h * out_w..(k + 1) * out_h * out_w];
        for (oy, &(y0, y1, fy)) in ys.iter().enumerate() {
            let (r0, r1) = (&plane[y0 * w..(y0 + 1) * w], &plane[y1 * w..(y1 + 1) * w]);
            for (ox, &(x0, x1, fx)) in xs.iter().enumerate() {
                let a = r0[x0] + (r0[x1] - r0[x0]) * fx;
                let b = r1[x0] + (r1[x1] - r1[x0]) * fx;
                dst[oy * out_w + ox] = a + (b - a) * fy;
            }
        }
    }
    out
}

/// Bilinear resize of a whole CHW sample to `out_h x out_w`.
pub fn resize_bilinear(img: &[f32], c: usize, h: usize, w: usize, out_h: usize, out_w: usize) -> Vec<f32> {
    resize_window_bilinear(img, c, h, w, (0, 0, h, w), out_h, out_w)
}

/// The central `out_h x out_w` window (clamped to the image), resized to `out_h x out_w`
/// (a plain crop when the image is at least that large).
pub fn center_crop(img: &[f32], c: usize, h: usize, w: usize, out_h: usize, out_w: usize) -> Vec<f32> {
    let (ch, cw) = (out_h.min(h), out_w.min(w));
    resize_window_bilinear(img, c, h, w, ((h - ch) / 2, (w - cw) / 2, ch, cw), out_h, out_w)
}

/// torchvision's `RandomResizedCrop((out_h, out_w), scale, ratio)` (defaults
/// `scale = (0.08, 1.0)`, `ratio = (3/4, 4/3)`): picks a window with
/// [`random_resized_crop_params`] and resamples it bilinearly to `out_h x out_w`.
#[allow(clippy::too_many_arguments)]
pub fn random_resized_crop(
    img: &[f32],
    c: usize,
    h: usize,
    w: usize,
    out_h: usize,
    out_w: usize,
    scale: (f64, f64),
    ratio: (f64, f64),
    rng: &mut DeqRng,
) -> Vec<f32> {
    let win = random_resized_crop_params(h, w, scale, ratio, rng);
    resize_window_bilinear(img, c, h, w, win, out_h, out_w)
}
