//! RAFT's convex upsampling: each pixel of the 8x finer flow is a convex combination (softmax
//! weights from the mask head) of the 3x3 coarse neighbours of its coarse pixel, zero-padded at
//! the border, with the flow scaled by 8. Composed from candle ops, so it is differentiable in
//! both the flow and the mask on every device.

use candle_core::{Result, Tensor};

/// Upsamples `flow` `(N, C, H, W)` with `mask` logits `(N, 576, H, W)` (channel `k * 64 + a * 8
/// + b`: tap `k` of the 3x3 window, row-major; sub-pixel row `a`, column `b`) to
/// `(N, C, 8H, 8W)`: output pixel `(8i + a, 8j + b)` is `sum_k softmax_k(mask) * 8 flow[i +
/// ki - 1, j + kj - 1]`.
pub fn convex_upsample(flow: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let (n, c, h, w) = flow.dims4()?;
    let (nm, cm, hm, wm) = mask.dims4()?;
    if (nm, cm, hm, wm) != (n, 576, h, w) {
        candle_core::bail!("convex upsampling: mask {:?} does not fit flow {:?} (want (N, 576, H, W))", mask.dims(), flow.dims());
    }
    let m = mask.reshape((n, 9, 64, h, w))?;
    // Softmax over the 9 taps (max subtracted for range; it cancels in the ratio).
    let mx = m.max_keepdim(1)?.detach();
    let e = m.broadcast_sub(&mx)?.exp()?;
    let wts = e.broadcast_div(&e.sum_keepdim(1)?)?;
    let f8 = (flow * 8.0)?.pad_with_zeros(2, 1, 1)?.pad_with_zeros(3, 1, 1)?;
    let mut acc: Option<Tensor> = None;
    for k in 0..9 {
        let tap = f8.narrow(2, k / 3, h)?.narrow(3, k % 3, w)?.unsqueeze(2)?;
        let term = wts.narrow(1, k, 1)?.broadcast_mul(&tap)?;
        acc = Some(match acc {
            None => term,
            Some(a) => (a + term)?,
        });
    }
    let up = acc.expect("nine taps");
    // (N, C, 64, H, W) -> (N, C, 8, 8, H, W) -> (N, C, H, 8, W, 8) -> (N, C, 8H, 8W).
    up.reshape((n, c, 8, 8, h, w))?.permute((0, 1, 4, 2, 5, 3))?.contiguous()?.reshape((n, c, 8 * h, 8 * w))
}

/// Bilinear 8x upsampling of a flow with `align_corners = True`, values scaled by 8 (RAFT's
/// `upflow8`, used where there is no mask).
pub fn upflow8(flow: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = flow.dims4()?;
    let up = bilinear_align_corners(flow, 8 * h, 8 * w)?;
    up * 8.0
}

/// Resizes `(N, C, H, W)` to `(N, C, oh, ow)` by bilinear interpolation with `align_corners =
/// True`, as two matrix products (differentiable through candle's matmul).
pub fn bilinear_align_corners(x: &Tensor, oh: usize, ow: usize) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let mat = |out: usize, inp: usize| -> Result<Tensor> {
        let mut m = vec![0f64; out * inp];
        for o in 0..out {
            let s = if out > 1 { o as f64 * (inp - 1) as f64 / (out - 1) as f64 } else { 0.0 };
            let i0 = (s.floor() as usize).min(inp - 1);
            let t = s - i0 as f64;
            m[o * inp + i0] += 1.0 - t;
            if t > 0.0 && i0 + 1 < inp {
                m[o * inp + i0 + 1] += t;
            }
        }
        Tensor::from_vec(m, (out, inp), x.device())?.to_dtype(x.dtype())
    };
    let (mh, mw) = (mat(oh, h)?, mat(ow, w)?);
    // Rows: (N*C, H, W) -> (N*C, oh, W) via mh; columns via mw^T.
    let y = x.reshape((n * c, h, w))?;
    let y = mh.unsqueeze(0)?.broadcast_matmul(&y)?;
    let y = y.broadcast_matmul(&mw.t()?.unsqueeze(0)?)?;
    y.reshape((n, c, oh, ow))
}

#[cfg(test)]
mod tests {
    use super::*;
    use deq_core::gradcheck::{assert_gradient, central_differences};
    use candle_core::{DType, Device, Var};
    use deq_core::rng::DeqRng;

    /// RAFT's definition with explicit loops.
    fn naive(flow: &[f64], mask: &[f64], n: usize, c: usize, h: usize, w: usize) -> Vec<f64> {
        let mut out = vec![0f64; n * c * 64 * h * w];
        for b in 0..n {
            for i in 0..h {
                for j in 0..w {
                    for a in 0..8 {
                        for bb in 0..8 {
                            let logit = |k: usize| mask[((b * 576 + k * 64 + a * 8 + bb) * h + i) * w + j];
                            let mx = (0..9).map(logit).fold(f64::MIN, f64::max);
                            let z: f64 = (0..9).map(|k| (logit(k) - mx).exp()).sum();
                            for ch in 0..c {
                                let mut s = 0.0;
                                for k in 0..9 {
                                    let (ii, jj) = (i as i64 + (k / 3) as i64 - 1, j as i64 + (k % 3) as i64 - 1);
                                    if ii >= 0 && jj >= 0 && (ii as usize) < h && (jj as usize) < w {
                                        s += (logit(k) - mx).exp() / z * 8.0 * flow[((b * c + ch) * h + ii as usize) * w + jj as usize];
                                    }
                                }
                                out[((b * c + ch) * 8 * h + 8 * i + a) * 8 * w + 8 * j + bb] = s;
                            }
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn convex_upsampling_matches_rafts_definition_and_finite_differences() {
        let dev = Device::Cpu;
        let mut rng = DeqRng::new(3);
        let (n, c, h, w) = (2, 2, 3, 4);
        let flow = rng.randn((n, c, h, w), DType::F64, &dev).unwrap();
        let mask = rng.randn((n, 576, h, w), DType::F64, &dev).unwrap();
        let up = convex_upsample(&flow, &mask).unwrap();
        assert_eq!(up.dims(), &[n, c, 8 * h, 8 * w]);
        let want = naive(&flow.flatten_all().unwrap().to_vec1().unwrap(), &mask.flatten_all().unwrap().to_vec1().unwrap(), n, c, h, w);
        let got = up.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        assert!(got.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-12));
        // Gradients in both inputs.
        let (fv, mv) = (Var::from_tensor(&flow).unwrap(), Var::from_tensor(&mask).unwrap());
        let u = rng.randn((n, c, 8 * h, 8 * w), DType::F64, &dev).unwrap();
        let loss = |f: &Tensor, m: &Tensor| convex_upsample(f, m).unwrap().mul(&u).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
        let g = convex_upsample(fv.as_tensor(), mv.as_tensor()).unwrap().mul(&u).unwrap().sum_all().unwrap().backward().unwrap();
        assert_gradient("flow", g.get(&fv).unwrap(), &central_differences(&flow, 1e-6, 1, &|f| loss(f, &mask)).unwrap(), 1e-6);
        assert_gradient("mask", g.get(&mv).unwrap(), &central_differences(&mask, 1e-6, 97, &|m| loss(&flow, m)).unwrap(), 1e-6);
        assert!(convex_upsample(&flow, &mask.narrow(1, 0, 575).unwrap()).is_err());
    }

    #[test]
    fn align_corners_resizing_keeps_corners_and_is_linear() {
        let dev = Device::Cpu;
        let x = Tensor::from_vec(vec![0.0f64, 1.0, 2.0, 3.0], (1, 1, 2, 2), &dev).unwrap();
        let y = bilinear_align_corners(&x, 3, 5).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        // Row 0: 0 .. 1 in 5 steps; row 1 (middle): 1 .. 2; row 2: 2 .. 3.
        let want = [0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.25, 1.5, 1.75, 2.0, 2.0, 2.25, 2.5, 2.75, 3.0];
        assert!(y.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-12), "{y:?}");
        let up = upflow8(&x).unwrap();
        assert_eq!(up.dims(), &[1, 1, 16, 16]);
        assert_eq!(up.flatten_all().unwrap().to_vec1::<f64>().unwrap()[255], 24.0);
    }
}
