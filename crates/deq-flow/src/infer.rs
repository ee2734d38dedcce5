//! Inference on frames of any size: replicate-padding to a multiple of 8 (RAFT's
//! `InputPadder`), one evaluation solve, the flow cropped back; warm starts from the previous
//! pair of a sequence.

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

/// RAFT's warm start for the next pair of a sequence: the 1/8-resolution flow `low`
/// `(1, 2, h, w)` of the previous pair, moved forward along itself. Each cell `p` sends its flow
/// to `p + flow(p)`; moved points outside the open grid `(0, w) x (0, h)` are dropped, and every
/// cell takes the value of the nearest moved point (RAFT's `forward_interpolate`, nearest-neighbour
/// `griddata`); zeros if every point left the grid. Buckets of unit cells keep it near-linear.
pub fn forward_interpolate(low: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = low.dims4()?;
    if b != 1 || c != 2 {
        return Err(candle_core::Error::Msg(format!("forward_interpolate takes one (1, 2, h, w) flow, got {:?}", low.dims())).into());
    }
    let v = low.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let (du, dv) = v.split_at(h * w);
    // Moved points and, per unit cell, the points that landed in it.
    let mut points: Vec<(f32, f32, f32, f32)> = Vec::new();
    let mut buckets: Vec<Vec<u32>> = vec![Vec::new(); h * w];
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            let (x1, y1) = (x as f32 + du[i], y as f32 + dv[i]);
            if x1 > 0.0 && x1 < w as f32 && y1 > 0.0 && y1 < h as f32 {
                // 0 < x1 < w, so the truncation is a column index (likewise rows).
                let cell = y1 as usize * w + x1 as usize;
                buckets[cell].push(points.len() as u32);
                points.push((x1, y1, du[i], dv[i]));
            }
        }
    }
    let mut out = vec![0f32; 2 * h * w];
    if !points.is_empty() {
        let reach = h.max(w) as isize;
        for y in 0..h {
            for x in 0..w {
                let (mut best, mut best_d2) = (u32::MAX, f32::INFINITY);
                for r in 0..=reach {
                    // The cells at Chebyshev distance r around (y, x).
                    for cy in (y as isize - r)..=(y as isize + r) {
                        if cy < 0 || cy >= h as isize {
                            continue;
                        }
                        let edge = cy == y as isize - r || cy == y as isize + r;
                        // Whole top and bottom rows (r = 0 is one), two cells on the others.
                        let step = if edge { 1 } else { 2 * r as usize };
                        let mut cx = x as isize - r;
                        while cx <= x as isize + r {
                            if cx >= 0 && cx < w as isize {
                                for &k in &buckets[cy as usize * w + cx as usize] {
                                    let p = points[k as usize];
                                    let d2 = (p.0 - x as f32).powi(2) + (p.1 - y as f32).powi(2);
                                    if d2 < best_d2 || (d2 == best_d2 && k < best) {
                                        (best, best_d2) = (k, d2);
                                    }
                                }
                            }
                            cx += step as isize;
                        }
                    }
                    // Points in ring r + 1 are more than r away (none found yet: infinity).
                    if best_d2 <= (r * r) as f32 {
                        break;
                    }
                }
                let p = points[best as usize];
                out[y * w + x] = p.2;
                out[h * w + y * w + x] = p.3;
            }
        }
    }
    Ok(Tensor::from_vec(out, (1, 2, h, w), low.device())?.to_dtype(low.dtype())?)
}

/// The warm start of [`predict`] from the full-resolution flow `prev` of the previous pair (same
/// size as the frames): padded like the frames, averaged over 8x8 blocks and divided by 8 (the
/// model's 1/8 resolution), then [`forward_interpolate`]d.
pub fn warm_start(prev: &Flow, padder: &Padder, device: &Device) -> Result<Tensor> {
    let t = padder.pad(&prev.to_tensor(device)?.unsqueeze(0)?)?;
    let (_, _, h, w) = t.dims4()?;
    let low = (t.reshape((1, 2, h / 8, 8, w / 8, 8))?.mean(5)?.mean(3)? / 8.0)?;
    forward_interpolate(&low)
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

    /// Nearest moved point by exhaustive search (smallest index on ties).
    fn brute_force(du: &[f32], dv: &[f32], h: usize, w: usize) -> Vec<f32> {
        let pts: Vec<(f32, f32, f32, f32)> = (0..h * w)
            .map(|i| ((i % w) as f32 + du[i], (i / w) as f32 + dv[i], du[i], dv[i]))
            .filter(|p| p.0 > 0.0 && p.0 < w as f32 && p.1 > 0.0 && p.1 < h as f32)
            .collect();
        let mut out = vec![0f32; 2 * h * w];
        for i in 0..h * w {
            let (x, y) = ((i % w) as f32, (i / w) as f32);
            let d = |p: &(f32, f32, f32, f32)| (p.0 - x).powi(2) + (p.1 - y).powi(2);
            if let Some(p) = pts.iter().fold(None::<&(f32, f32, f32, f32)>, |b, p| match b {
                Some(q) if d(q) <= d(p) => Some(q),
                _ => Some(p),
            }) {
                out[i] = p.2;
                out[h * w + i] = p.3;
            }
        }
        out
    }

    #[test]
    fn forward_interpolation_takes_the_nearest_moved_point() {
        let mut rng = deq_core::rng::DeqRng::new(5);
        for (h, w, scale) in [(7, 9, 3.0), (12, 5, 6.0), (3, 3, 0.7), (20, 31, 12.0)] {
            let low = rng.rand((1, 2, h, w), -scale, scale, DType::F32, &Device::Cpu).unwrap();
            let v = low.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let want = brute_force(&v[..h * w], &v[h * w..], h, w);
            let got = forward_interpolate(&low).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(got, want, "{h}x{w} scale {scale}");
        }
        // Whole-pixel motions: moved points on the grid lines (the open bounds decide) and
        // equidistant points (the earliest cell wins, as in the exhaustive search).
        for (h, w, reach) in [(6, 7, 3i32), (9, 4, 2), (5, 11, 6)] {
            let v: Vec<f32> = (0..2 * h * w).map(|_| (rng.next_u64() % (2 * reach as u64 + 1)) as f32 - reach as f32).collect();
            let low = Tensor::from_vec(v.clone(), (1, 2, h, w), &Device::Cpu).unwrap();
            let want = brute_force(&v[..h * w], &v[h * w..], h, w);
            let got = forward_interpolate(&low).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(got, want, "{h}x{w} integer motions up to {reach}");
        }
    }

    #[test]
    fn forward_interpolation_of_uniform_and_escaping_flows() {
        let dev = Device::Cpu;
        // A uniform motion stays uniform: every cell's nearest moved point carries the same flow.
        let uniform = Tensor::from_vec([vec![1.5f32; 24], vec![-0.5f32; 24]].concat(), (1, 2, 4, 6), &dev).unwrap();
        let got = forward_interpolate(&uniform).unwrap();
        assert_eq!(got.flatten_all().unwrap().to_vec1::<f32>().unwrap(), uniform.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        // Everything leaves the grid: no information, zeros.
        let away = Tensor::from_vec([vec![50f32; 24], vec![0f32; 24]].concat(), (1, 2, 4, 6), &dev).unwrap();
        assert!(forward_interpolate(&away).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().all(|&v| v == 0.0));
        // The grid is open: a point landing exactly on its right or bottom border is dropped.
        for (i, (du, dv)) in [(5usize, (1f32, 0f32)), (4, (0.0, 1.0))] {
            let mut v = [vec![50f32; 6], vec![0f32; 6]].concat();
            (v[i], v[6 + i]) = (du, dv);
            let t = Tensor::from_vec(v, (1, 2, 2, 3), &dev).unwrap();
            assert!(forward_interpolate(&t).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().all(|&v| v == 0.0), "point {i}");
        }
        assert!(forward_interpolate(&Tensor::zeros((1, 3, 4, 6), DType::F32, &dev).unwrap()).is_err());
    }

    #[test]
    fn warm_start_is_the_block_mean_at_one_eighth_scale() {
        // A full-resolution flow of (16, -8) pixels everywhere on a 20x30 frame is (2, -1) cells at
        // 1/8 resolution on the padded 24x32 grid.
        let mut prev = Flow::zeros(20, 30);
        for i in 0..600 {
            prev.uv[2 * i] = 16.0;
            prev.uv[2 * i + 1] = -8.0;
        }
        let t = warm_start(&prev, &Padder::new(20, 30, PadMode::Sintel), &Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[1, 2, 3, 4]);
        let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(v[..12].iter().all(|&u| u == 2.0) && v[12..].iter().all(|&u| u == -1.0), "{v:?}");
    }
}
