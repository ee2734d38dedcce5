//! A generator of FlyingChairs-like training pairs from real photographs, with exact ground
//! truth.
//!
//! A pair is a background and several foreground layers. The background is a photograph seen
//! through a random projective map; between the frames it moves by a further small projective
//! motion (rotation, zoom, shear, translation and a little perspective). Each foreground layer is
//! a smooth random blob cut from another photograph (or, for a share of layers, a procedural
//! texture) that moves with its own affine motion; layers keep their depth order and occlude each
//! other and the background. Both frames are rendered by inverse mapping (every output pixel
//! asks which layer it sees and where that point lies in the layer's texture), so the flow of
//! every pixel of frame 1 is exact: the position of the same surface point in frame 2 minus its
//! position in frame 1. The pixels whose point is hidden in frame 2 (by a nearer layer, or
//! because it left the frame) are marked occluded.
//!
//! Magnitudes follow `u^2 * max` for a uniform `u` per motion, so most motions are small and
//! some reach `max_motion` pixels (the default, 96, is Sintel's range at this resolution).
//! Everything is drawn from one [`DeqRng`] seeded per pair: a pair is a pure function of the
//! textures, the configuration and its seed.

use deq_core::rng::DeqRng;
use serde::{Deserialize, Serialize};

use crate::flow::Flow;

/// Settings of the generator (the `[data.synthetic]` table).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SynthConfig {
    /// Output height.
    pub height: usize,
    /// Output width.
    pub width: usize,
    /// Fewest and most foreground layers.
    pub layers: [usize; 2],
    /// Largest layer translation between the frames, pixels.
    pub max_motion: f64,
    /// Largest background translation between the frames, pixels.
    pub max_background_motion: f64,
    /// Largest rotation between the frames, degrees.
    pub max_rotation: f64,
    /// Largest relative zoom between the frames (0.1: up to 10%).
    pub max_zoom: f64,
    /// Layer sizes as a fraction of the shorter side: smallest and largest radius.
    pub layer_radius: [f64; 2],
    /// Share of layers filled with a procedural texture instead of a photograph.
    pub procedural: f64,
    /// Largest standard deviation of the Gaussian noise added to each frame (0-255 scale).
    pub noise: f64,
}

impl Default for SynthConfig {
    fn default() -> Self {
        Self { height: 320, width: 448, layers: [3, 7], max_motion: 96.0, max_background_motion: 24.0, max_rotation: 12.0, max_zoom: 0.12, layer_radius: [0.06, 0.3], procedural: 0.25, noise: 3.0 }
    }
}

impl SynthConfig {
    /// Checks the settings; the message names the key.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let k = |s: &str| format!("data.synthetic.{s}");
        if self.height < 16 || self.width < 16 || self.height > 4096 || self.width > 4096 {
            return Err(format!("{}: {}x{} must be 16 to 4096 a side", k("height/width"), self.height, self.width));
        }
        if self.layers[0] > self.layers[1] || self.layers[1] > 64 {
            return Err(format!("{}: [{}, {}] must be a range within 0 to 64", k("layers"), self.layers[0], self.layers[1]));
        }
        for (name, v, hi) in [("max_motion", self.max_motion, 1e4), ("max_background_motion", self.max_background_motion, 1e4), ("max_rotation", self.max_rotation, 90.0), ("max_zoom", self.max_zoom, 0.9), ("procedural", self.procedural, 1.0), ("noise", self.noise, 100.0)] {
            if !(v.is_finite() && (0.0..=hi).contains(&v)) {
                return Err(format!("{} = {v} must be within 0 to {hi}", k(name)));
            }
        }
        if !(self.layer_radius[0] > 0.0 && self.layer_radius[0] <= self.layer_radius[1] && self.layer_radius[1] <= 1.0) {
            return Err(format!("{}: [{}, {}] must be a range within (0, 1]", k("layer_radius"), self.layer_radius[0], self.layer_radius[1]));
        }
        Ok(())
    }
}

/// An RGB texture, `height * width * 3` values in `[0, 255]`.
#[derive(Debug, Clone)]
pub struct Texture {
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
    /// Interleaved RGB.
    pub rgb: Vec<f32>,
}

impl Texture {
    /// Bilinear sample at `(x, y)` with mirrored borders.
    fn sample(&self, x: f64, y: f64) -> [f32; 3] {
        let mirror = |v: f64, n: usize| -> f64 {
            let n = n as f64;
            let p = 2.0 * (n - 1.0).max(1.0);
            let m = v.rem_euclid(p);
            if m > n - 1.0 {
                p - m
            } else {
                m
            }
        };
        let (x, y) = (mirror(x, self.width), mirror(y, self.height));
        let (x0, y0) = (x.floor() as usize, y.floor() as usize);
        let (x1, y1) = ((x0 + 1).min(self.width - 1), (y0 + 1).min(self.height - 1));
        let (fx, fy) = ((x - x0 as f64) as f32, (y - y0 as f64) as f32);
        let px = |yy: usize, xx: usize, c: usize| self.rgb[(yy * self.width + xx) * 3 + c];
        [0, 1, 2].map(|c| {
            let top = px(y0, x0, c) * (1.0 - fx) + px(y0, x1, c) * fx;
            let bot = px(y1, x0, c) * (1.0 - fx) + px(y1, x1, c) * fx;
            top * (1.0 - fy) + bot * fy
        })
    }
}

/// A 3x3 projective map of pixel coordinates `(x, y, 1)`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Mat3([[f64; 3]; 3]);

impl Mat3 {
    #[cfg(test)]
    fn identity() -> Self {
        Mat3([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    }
    fn translate(tx: f64, ty: f64) -> Self {
        Mat3([[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]])
    }
    fn mul(&self, o: &Mat3) -> Mat3 {
        let mut r = [[0.0; 3]; 3];
        for (i, row) in r.iter_mut().enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                *v = (0..3).map(|k| self.0[i][k] * o.0[k][j]).sum();
            }
        }
        Mat3(r)
    }
    fn apply(&self, x: f64, y: f64) -> (f64, f64) {
        let m = &self.0;
        let w = m[2][0] * x + m[2][1] * y + m[2][2];
        ((m[0][0] * x + m[0][1] * y + m[0][2]) / w, (m[1][0] * x + m[1][1] * y + m[1][2]) / w)
    }
    fn inverse(&self) -> Mat3 {
        let m = &self.0;
        let c = |a: usize, b: usize, cc: usize, d: usize| m[a][b] * m[cc][d] - m[a][d] * m[cc][b];
        let det = m[0][0] * c(1, 1, 2, 2) - m[0][1] * c(1, 0, 2, 2) + m[0][2] * c(1, 0, 2, 1);
        let adj = [
            [c(1, 1, 2, 2), -c(0, 1, 2, 2), c(0, 1, 1, 2)],
            [-c(1, 0, 2, 2), c(0, 0, 2, 2), -c(0, 0, 1, 2)],
            [c(1, 0, 2, 1), -c(0, 0, 2, 1), c(0, 0, 1, 1)],
        ];
        Mat3(adj.map(|r| r.map(|v| v / det)))
    }
    /// Rotation by `deg`, zoom `s`, shear `k` about `(cx, cy)`, then translation `(tx, ty)`.
    fn about(cx: f64, cy: f64, deg: f64, s: f64, k: f64, tx: f64, ty: f64) -> Mat3 {
        let (sn, cs) = deg.to_radians().sin_cos();
        let lin = Mat3([[s * cs, -s * sn + k, 0.0], [s * sn, s * cs, 0.0], [0.0, 0.0, 1.0]]);
        Mat3::translate(cx + tx, cy + ty).mul(&lin).mul(&Mat3::translate(-cx, -cy))
    }
}

/// A surface: what fills a layer.
#[derive(Debug, Clone)]
enum Fill {
    /// A photograph, mapped by `tex` from layer coordinates, times a colour gain.
    Photo { texture: usize, tex: Mat3, gain: [f32; 3] },
    /// A sum of oriented sinusoids and a colour ramp.
    Procedural { waves: Vec<(f64, f64, f64, [f32; 3])>, base: [f32; 3] },
}

/// One foreground layer: a blob of centre `c` and radius profile `radius(theta)` in frame-1
/// coordinates, moving by `motion` (frame-1 -> frame-2 positions).
#[derive(Debug, Clone)]
struct Layer {
    cx: f64,
    cy: f64,
    r0: f64,
    harmonics: Vec<(f64, f64)>,
    fill: Fill,
    motion: Mat3,
    inv_motion: Mat3,
}

impl Layer {
    fn contains(&self, x: f64, y: f64) -> bool {
        let (dx, dy) = (x - self.cx, y - self.cy);
        let d = dx.hypot(dy);
        if d > self.r0 * 1.8 {
            return false;
        }
        let t = dy.atan2(dx);
        let r = self.r0 * (1.0 + self.harmonics.iter().enumerate().map(|(i, (a, ph))| a * ((i + 2) as f64 * t + ph).sin()).sum::<f64>());
        d <= r
    }
}

fn colour(fill: &Fill, textures: &[Texture], x: f64, y: f64) -> [f32; 3] {
    match fill {
        Fill::Photo { texture, tex, gain } => {
            let (u, v) = tex.apply(x, y);
            let c = textures[*texture].sample(u, v);
            [0, 1, 2].map(|i| (c[i] * gain[i]).clamp(0.0, 255.0))
        }
        Fill::Procedural { waves, base } => {
            let mut c = *base;
            for (kx, ky, ph, amp) in waves {
                let s = (kx * x + ky * y + ph).sin() as f32;
                for i in 0..3 {
                    c[i] += amp[i] * s;
                }
            }
            c.map(|v| v.clamp(0.0, 255.0))
        }
    }
}

/// One generated pair.
#[derive(Debug, Clone)]
pub struct SynthPair {
    /// Frame 1, `height * width * 3` interleaved RGB in `[0, 255]`.
    pub img1: Vec<f32>,
    /// Frame 2.
    pub img2: Vec<f32>,
    /// The exact flow from frame 1 to frame 2 (every pixel valid).
    pub flow: Flow,
    /// 1 where the frame-1 pixel's surface point is hidden or outside frame 2.
    pub occluded: Vec<f32>,
}

/// The generator: textures and settings.
#[derive(Debug, Clone)]
pub struct Generator {
    textures: Vec<Texture>,
    cfg: SynthConfig,
}

fn magnitude(rng: &mut DeqRng, max: f64) -> f64 {
    let u = rng.uniform();
    u * u * max
}

fn signed(rng: &mut DeqRng, max: f64) -> f64 {
    (2.0 * rng.uniform() - 1.0) * max
}

impl Generator {
    /// A generator over `textures` (at least one, each at least 8x8 pixels).
    pub fn new(textures: Vec<Texture>, cfg: SynthConfig) -> std::result::Result<Self, String> {
        cfg.validate()?;
        if textures.is_empty() {
            return Err("the synthetic generator needs at least one source image".into());
        }
        if let Some(t) = textures.iter().find(|t| t.height < 8 || t.width < 8 || t.rgb.len() != t.height * t.width * 3) {
            return Err(format!("a source image of {}x{} is too small (8x8 at least)", t.height, t.width));
        }
        Ok(Self { textures, cfg })
    }

    /// The settings.
    pub fn config(&self) -> &SynthConfig {
        &self.cfg
    }

    fn photo(&self, rng: &mut DeqRng, cx: f64, cy: f64) -> Fill {
        let texture = (rng.next_u64() % self.textures.len() as u64) as usize;
        let t = &self.textures[texture];
        // Layer coordinates -> texture: random rotation, zoom 0.5-2, anywhere in the texture.
        let (tx, ty) = (rng.uniform() * t.width as f64, rng.uniform() * t.height as f64);
        let zoom = 2f64.powf(signed(rng, 1.0));
        let m = Mat3::translate(tx, ty).mul(&Mat3::about(0.0, 0.0, rng.uniform() * 360.0, zoom, signed(rng, 0.2), 0.0, 0.0)).mul(&Mat3::translate(-cx, -cy));
        let gain = [0, 1, 2].map(|_| (0.75 + 0.5 * rng.uniform()) as f32);
        Fill::Photo { texture, tex: m, gain }
    }

    fn procedural(&self, rng: &mut DeqRng) -> Fill {
        let base = [0, 1, 2].map(|_| (40.0 + 175.0 * rng.uniform()) as f32);
        let waves = (0..3 + (rng.next_u64() % 4) as usize)
            .map(|_| {
                let period = 8.0 + 56.0 * rng.uniform();
                let ang = rng.uniform() * std::f64::consts::PI;
                let k = 2.0 * std::f64::consts::PI / period;
                (k * ang.cos(), k * ang.sin(), rng.uniform() * 6.3, [0, 1, 2].map(|_| (40.0 * signed(rng, 1.0)) as f32))
            })
            .collect();
        Fill::Procedural { waves, base }
    }

    fn motion(&self, rng: &mut DeqRng, cx: f64, cy: f64, max_t: f64, perspective: f64) -> Mat3 {
        let c = &self.cfg;
        let t = magnitude(rng, max_t);
        let dir = rng.uniform() * 2.0 * std::f64::consts::PI;
        let mut m = Mat3::about(cx, cy, signed(rng, c.max_rotation) * rng.uniform(), 1.0 + signed(rng, c.max_zoom) * rng.uniform(), signed(rng, 0.05) * rng.uniform(), t * dir.cos(), t * dir.sin());
        if perspective > 0.0 {
            // A small projective term about the centre.
            let p = Mat3([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [signed(rng, perspective), signed(rng, perspective), 1.0]]);
            m = m.mul(&Mat3::translate(cx, cy)).mul(&p).mul(&Mat3::translate(-cx, -cy));
        }
        m
    }

    /// The pair drawn from `seed`.
    pub fn pair(&self, seed: u64) -> SynthPair {
        let c = &self.cfg;
        let mut rng = DeqRng::new(seed);
        let (h, w) = (c.height, c.width);
        let (cx, cy) = (w as f64 / 2.0, h as f64 / 2.0);
        // Background: frame-1 pixel -> texture; frame-2 positions by its motion.
        let bg_fill = self.photo(&mut rng, cx, cy);
        // A perspective term that changes the scale by up to ~1% across the frame.
        let bg_motion = self.motion(&mut rng, cx, cy, c.max_background_motion, 0.02 / w.max(h) as f64);
        let bg_inv = bg_motion.inverse();
        let n = c.layers[0] + (rng.next_u64() % (c.layers[1] - c.layers[0] + 1) as u64) as usize;
        let side = h.min(w) as f64;
        let layers: Vec<Layer> = (0..n)
            .map(|_| {
                let (lx, ly) = (rng.uniform() * w as f64, rng.uniform() * h as f64);
                let r0 = side * (c.layer_radius[0] + (c.layer_radius[1] - c.layer_radius[0]) * rng.uniform());
                let harmonics = (0..4).map(|i| (0.25 * rng.uniform() / (i + 1) as f64, rng.uniform() * 6.3)).collect();
                let fill = if rng.uniform() < c.procedural { self.procedural(&mut rng) } else { self.photo(&mut rng, lx, ly) };
                let motion = self.motion(&mut rng, lx, ly, c.max_motion, 0.0);
                Layer { cx: lx, cy: ly, r0, harmonics, fill, inv_motion: motion.inverse(), motion }
            })
            .collect();
        // Which layer a frame sees at (x, y): the nearest (last drawn) that covers the
        // corresponding frame-1 point; None = background.
        let top = |x: f64, y: f64, frame2: bool| -> Option<usize> {
            layers.iter().enumerate().rev().find(|(_, l)| {
                let (u, v) = if frame2 { l.inv_motion.apply(x, y) } else { (x, y) };
                l.contains(u, v)
            }).map(|(i, _)| i)
        };
        let render = |frame2: bool, rng: &mut DeqRng| -> Vec<f32> {
            let noise = c.noise * rng.uniform();
            let mut img = vec![0f32; h * w * 3];
            for y in 0..h {
                for x in 0..w {
                    let (px, py) = (x as f64, y as f64);
                    let col = match top(px, py, frame2) {
                        Some(i) => {
                            let l = &layers[i];
                            let (u, v) = if frame2 { l.inv_motion.apply(px, py) } else { (px, py) };
                            colour(&l.fill, &self.textures, u, v)
                        }
                        None => {
                            let (u, v) = if frame2 { bg_inv.apply(px, py) } else { (px, py) };
                            colour(&bg_fill, &self.textures, u, v)
                        }
                    };
                    for ch in 0..3 {
                        img[(y * w + x) * 3 + ch] = col[ch];
                    }
                }
            }
            if noise > 0.0 {
                for v in img.iter_mut() {
                    *v = (*v + (noise * rng.normal()) as f32).clamp(0.0, 255.0);
                }
            }
            img
        };
        let img1 = render(false, &mut rng);
        let img2 = render(true, &mut rng);
        let mut uv = vec![0f32; h * w * 2];
        let mut occluded = vec![0f32; h * w];
        for y in 0..h {
            for x in 0..w {
                let (px, py) = (x as f64, y as f64);
                let who = top(px, py, false);
                let (qx, qy) = match who {
                    Some(i) => layers[i].motion.apply(px, py),
                    None => bg_motion.apply(px, py),
                };
                let i = y * w + x;
                uv[2 * i] = (qx - px) as f32;
                uv[2 * i + 1] = (qy - py) as f32;
                let inside = qx >= 0.0 && qy >= 0.0 && qx <= (w - 1) as f64 && qy <= (h - 1) as f64;
                if !inside || top(qx, qy, true) != who {
                    occluded[i] = 1.0;
                }
            }
        }
        SynthPair { img1, img2, flow: Flow { height: h, width: w, uv, valid: None }, occluded }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A smooth, non-periodic test texture.
    fn texture(seed: u64) -> Texture {
        let (h, w) = (64, 80);
        let mut rng = DeqRng::new(seed);
        let f: Vec<(f64, f64, f64)> = (0..6).map(|_| (rng.uniform() * 0.3, rng.uniform() * 0.3, rng.uniform() * 6.0)).collect();
        let rgb = (0..h * w * 3)
            .map(|i| {
                let (p, c) = (i / 3, i % 3);
                let (y, x) = ((p / w) as f64, (p % w) as f64);
                let s: f64 = f.iter().enumerate().map(|(k, (a, b, ph))| (a * x + b * y + ph + c as f64 * (k as f64 + 1.0)).sin()).sum();
                (127.5 + 20.0 * s) as f32
            })
            .collect();
        Texture { height: h, width: w, rgb }
    }

    fn generator(noise: f64) -> Generator {
        let cfg = SynthConfig { height: 96, width: 128, noise, ..Default::default() };
        Generator::new(vec![texture(1), texture(2)], cfg).unwrap()
    }

    /// Frame 2 sampled bilinearly at `p + flow(p)`.
    fn warp(img2: &[f32], flow: &Flow, x: usize, y: usize) -> Option<[f32; 3]> {
        let (w, h) = (flow.width, flow.height);
        let (u, v) = flow.at(y, x);
        let (sx, sy) = (x as f64 + u as f64, y as f64 + v as f64);
        if sx < 0.0 || sy < 0.0 || sx > (w - 1) as f64 || sy > (h - 1) as f64 {
            return None;
        }
        let (x0, y0) = (sx.floor() as usize, sy.floor() as usize);
        let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
        let (fx, fy) = ((sx - x0 as f64) as f32, (sy - y0 as f64) as f32);
        let p = |yy: usize, xx: usize, c: usize| img2[(yy * w + xx) * 3 + c];
        Some([0, 1, 2].map(|c| (p(y0, x0, c) * (1.0 - fx) + p(y0, x1, c) * fx) * (1.0 - fy) + (p(y1, x0, c) * (1.0 - fx) + p(y1, x1, c) * fx) * fy))
    }

    #[test]
    fn warping_frame_two_by_the_flow_gives_frame_one_where_visible() {
        let g = generator(0.0);
        let mut checked = 0usize;
        for seed in 0..6 {
            let pair = g.pair(seed);
            let (h, w) = (pair.flow.height, pair.flow.width);
            // Interior visible pixels whose 3x3 neighbourhood is visible too (layer boundaries
            // mix two surfaces under bilinear sampling).
            let mut err = 0.0f64;
            let mut n = 0usize;
            let mut err_occ = 0.0f64;
            let mut n_occ = 0usize;
            for y in 1..h - 1 {
                for x in 1..w - 1 {
                    let Some(c2) = warp(&pair.img2, &pair.flow, x, y) else { continue };
                    let c1 = &pair.img1[(y * w + x) * 3..][..3];
                    let e = (0..3).map(|c| (c1[c] - c2[c]).abs() as f64).sum::<f64>() / 3.0;
                    let clean = (0..9).all(|k| pair.occluded[(y + k / 3 - 1) * w + x + k % 3 - 1] == 0.0);
                    if clean {
                        err += e;
                        n += 1;
                    } else if pair.occluded[y * w + x] == 1.0 {
                        err_occ += e;
                        n_occ += 1;
                    }
                }
            }
            let mean = err / n as f64;
            assert!(n > h * w / 4, "seed {seed}: only {n} visible pixels");
            assert!(mean < 2.5, "seed {seed}: mean warping error {mean} on visible pixels");
            if n_occ > 50 {
                // Occluded pixels do not match: the mask is not trivially empty or wrong.
                assert!(err_occ / n_occ as f64 > 2.0 * mean, "seed {seed}: occluded {} vs visible {mean}", err_occ / n_occ as f64);
            }
            checked += n;
        }
        assert!(checked > 10_000);
    }

    #[test]
    fn pairs_are_deterministic_and_motions_reach_the_configured_range() {
        let g = generator(3.0);
        let a = g.pair(42);
        let b = g.pair(42);
        assert_eq!(a.img1, b.img1);
        assert_eq!(a.img2, b.img2);
        assert_eq!(a.flow, b.flow);
        assert_ne!(g.pair(43).img1, a.img1);
        let max = (0..40).map(|s| g.pair(s).flow.max_magnitude()).fold(0.0f32, f32::max);
        assert!(max > 40.0 && max < 200.0, "largest flow over 40 pairs: {max}");
        assert!(a.img1.iter().all(|v| (0.0..=255.0).contains(v)));
    }

    #[test]
    fn bad_settings_name_the_key() {
        let bad = SynthConfig { layers: [5, 2], ..Default::default() };
        assert!(bad.validate().unwrap_err().contains("data.synthetic.layers"));
        let bad = SynthConfig { max_zoom: 2.0, ..Default::default() };
        assert!(bad.validate().unwrap_err().contains("max_zoom"));
        assert!(Generator::new(vec![], SynthConfig::default()).is_err());
        assert!(Generator::new(vec![Texture { height: 4, width: 4, rgb: vec![0.0; 48] }], SynthConfig::default()).is_err());
    }

    #[test]
    fn matrices_invert() {
        let m = Mat3::about(10.0, 20.0, 17.0, 1.1, 0.05, 3.0, -4.0).mul(&Mat3([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1e-4, -2e-4, 1.0]]));
        let (x, y) = m.apply(5.0, 7.0);
        let (u, v) = m.inverse().apply(x, y);
        assert!((u - 5.0).abs() < 1e-9 && (v - 7.0).abs() < 1e-9);
        assert_eq!(Mat3::identity().apply(3.0, 4.0), (3.0, 4.0));
    }
}
