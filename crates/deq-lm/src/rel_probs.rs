//! Transformer-XL's attention probabilities in one pass: from the content scores `AC` and the
//! unshifted position scores `BD_raw` (both `(..., qlen, klen)`), each row `i` (query at key
//! index `mlen + i`) gets
//! `A[i, j] = softmax_j(scale * (AC[i, j] + BD_raw[i, j + qlen - 1 - i]))` over the keys it may
//! see, `j <= i + mlen` (and, with a local window of `local` keys, `j > i + mlen - local`),
//! and 0 elsewhere: the rel-shift, the scaling, the causal mask and the
//! softmax of [`crate::attention`]'s composed path, without the padded copies and the passes
//! over the score tensors they cost. The backward pass gives both inputs' gradients (the
//! position scores' scattered back along the shift); entries no query may see get 0.
//!
//! On the CPU (f32 and f64; rows in parallel, sums in f64) this is a custom op; on other
//! devices [`rel_probs`] composes candle's ops (the pad-and-reshape rel-shift, an additive
//! mask and softmax), which candle differentiates.

use crate::attention::{causal_mask, rel_shift};
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor, D};
use deq_core::nn::KernelFloat;
use rayon::prelude::*;

struct RelProbs {
    scale: f64,
    mlen: usize,
    local: usize,
}

/// The keys `lo..hi` that query `i` sees (`local` 0: no window).
fn visible(i: usize, mlen: usize, local: usize) -> (usize, usize) {
    let hi = i + mlen + 1;
    (if local > 0 { hi.saturating_sub(local) } else { 0 }, hi)
}

/// `(qlen, klen, ac offsets, bd offsets)` of two equal contiguous score layouts.
fn check(l1: &Layout, l2: &Layout, mlen: usize) -> Result<(usize, usize, usize, usize, usize, usize)> {
    if l1.shape() != l2.shape() {
        candle_core::bail!("rel_probs: content scores {:?} and position scores {:?} differ", l1.shape(), l2.shape());
    }
    let dims = l1.dims();
    if dims.len() < 2 {
        candle_core::bail!("rel_probs: scores of rank {} (need (..., qlen, klen))", dims.len());
    }
    let (q, k) = (dims[dims.len() - 2], dims[dims.len() - 1]);
    if k != q + mlen {
        candle_core::bail!("rel_probs: {k} keys for {q} queries and a memory of {mlen}");
    }
    let (a0, a1) = l1.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("rel_probs: contiguous inputs expected".into()))?;
    let (b0, b1) = l2.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("rel_probs: contiguous inputs expected".into()))?;
    debug_assert_eq!(a1 - a0, b1 - b0);
    Ok((q, k, a0, a1, b0, b1))
}

fn forward<T: KernelFloat>(ac: &[T], bd: &[T], q: usize, k: usize, mlen: usize, local: usize, scale: f64) -> Vec<T> {
    let mut out = vec![T::default(); ac.len()];
    out.par_chunks_mut(q * k).zip(ac.par_chunks(q * k)).zip(bd.par_chunks(q * k)).for_each(|((o, a), b)| {
        let mut s = vec![0f64; k];
        for i in 0..q {
            let (lo, hi) = visible(i, mlen, local);
            let (arow, brow, orow) = (&a[i * k..(i + 1) * k], &b[i * k..(i + 1) * k], &mut o[i * k..(i + 1) * k]);
            let shift = q - 1 - i;
            let mut max = f64::NEG_INFINITY;
            for j in lo..hi {
                let v = scale * (arow[j].to64() + brow[j + shift].to64());
                s[j] = v;
                max = max.max(v);
            }
            let mut sum = 0f64;
            for v in &mut s[lo..hi] {
                // the exponential in the element type's precision (f32's is several times faster)
                *v = T::from64(*v).exp_minus(max);
                sum += *v;
            }
            let inv = 1.0 / sum;
            for j in lo..hi {
                orow[j] = T::from64(s[j] * inv);
            }
        }
    });
    out
}

fn backward<T: KernelFloat>(p: &[T], g: &[T], q: usize, k: usize, mlen: usize, local: usize, scale: f64) -> (Vec<T>, Vec<T>) {
    let mut dac = vec![T::default(); p.len()];
    let mut dbd = vec![T::default(); p.len()];
    dac.par_chunks_mut(q * k).zip(dbd.par_chunks_mut(q * k)).zip(p.par_chunks(q * k).zip(g.par_chunks(q * k))).for_each(|((da, db), (pm, gm))| {
        for i in 0..q {
            let (lo, hi) = visible(i, mlen, local);
            let (prow, grow) = (&pm[i * k..(i + 1) * k], &gm[i * k..(i + 1) * k]);
            let dot: f64 = (lo..hi).map(|j| prow[j].to64() * grow[j].to64()).sum();
            let shift = q - 1 - i;
            for j in lo..hi {
                let ds = scale * prow[j].to64() * (grow[j].to64() - dot);
                da[i * k + j] = T::from64(ds);
                db[i * k + j + shift] = T::from64(ds);
            }
        }
    });
    (dac, dbd)
}

impl CustomOp2 for RelProbs {
    fn name(&self) -> &'static str {
        "deq-lm-rel-probs"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (q, k, a0, a1, b0, b1) = check(l1, l2, self.mlen)?;
        let out = match (s1, s2) {
            (CpuStorage::F32(a), CpuStorage::F32(b)) => CpuStorage::F32(forward(&a[a0..a1], &b[b0..b1], q, k, self.mlen, self.local, self.scale)),
            (CpuStorage::F64(a), CpuStorage::F64(b)) => CpuStorage::F64(forward(&a[a0..a1], &b[b0..b1], q, k, self.mlen, self.local, self.scale)),
            _ => candle_core::bail!("rel_probs: two f32 or two f64 inputs"),
        };
        Ok((out, l1.shape().clone()))
    }

    fn bwd(&self, ac: &Tensor, _bd: &Tensor, res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (p, g) = (res.contiguous()?, grad.contiguous()?);
        let dims = p.dims().to_vec();
        let (q, k) = (dims[dims.len() - 2], dims[dims.len() - 1]);
        let dev = ac.device();
        let (ps, pl) = p.storage_and_layout();
        let (gs, gl) = g.storage_and_layout();
        let range = |l: &Layout| l.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("rel_probs: contiguous gradient expected".into()));
        let ((p0, p1), (g0, g1)) = (range(pl)?, range(gl)?);
        let (da, db) = match (&*ps, &*gs) {
            (candle_core::Storage::Cpu(CpuStorage::F32(pv)), candle_core::Storage::Cpu(CpuStorage::F32(gv))) => {
                let (a, b) = backward(&pv[p0..p1], &gv[g0..g1], q, k, self.mlen, self.local, self.scale);
                (Tensor::from_vec(a, dims.clone(), dev)?, Tensor::from_vec(b, dims.clone(), dev)?)
            }
            (candle_core::Storage::Cpu(CpuStorage::F64(pv)), candle_core::Storage::Cpu(CpuStorage::F64(gv))) => {
                let (a, b) = backward(&pv[p0..p1], &gv[g0..g1], q, k, self.mlen, self.local, self.scale);
                (Tensor::from_vec(a, dims.clone(), dev)?, Tensor::from_vec(b, dims.clone(), dev)?)
            }
            _ => candle_core::bail!("rel_probs: the fused backward runs on the CPU in f32/f64, both the same"),
        };
        Ok((Some(da), Some(db)))
    }
}

/// The composed path (rel-shift, scale, mask, softmax) that the fused op replaces.
pub(crate) fn composed(ac: &Tensor, bd_raw: &Tensor, scale: f64, mlen: usize, local: usize) -> Result<Tensor> {
    let q = ac.dim(D::Minus2)?;
    let s = ((ac + rel_shift(bd_raw)?)? * scale)?.broadcast_add(&causal_mask(q, mlen, local, ac.dtype(), ac.device())?)?;
    candle_nn::ops::softmax(&s, D::Minus1)
}

/// The attention probabilities `(..., qlen, klen)` of content scores `ac` and unshifted
/// position scores `bd_raw` (see the module's documentation); `local` > 0 limits each query
/// to its last `local` keys.
pub fn rel_probs(ac: &Tensor, bd_raw: &Tensor, scale: f64, mlen: usize, local: usize) -> Result<Tensor> {
    if ac.device().is_cpu() && matches!(ac.dtype(), DType::F32 | DType::F64) && ac.dtype() == bd_raw.dtype() {
        ac.contiguous()?.apply_op2(&bd_raw.contiguous()?, RelProbs { scale, mlen, local })
    } else {
        composed(ac, bd_raw, scale, mlen, local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use deq_core::gradcheck::max_abs_diff;
    use candle_core::{Device, Var};
    use deq_core::rng::DeqRng;

    fn composed(ac: &Tensor, bd: &Tensor, scale: f64, mlen: usize, local: usize) -> Tensor {
        super::composed(ac, bd, scale, mlen, local).unwrap()
    }

    #[test]
    fn equals_the_composed_path_with_its_gradients() {
        let mut rng = DeqRng::new(5);
        for (lead, q, mlen, local) in [(vec![2usize, 3], 4usize, 3usize, 0usize), (vec![1], 5, 0, 0), (vec![3], 1, 6, 0), (vec![2], 4, 3, 2), (vec![2], 3, 0, 1)] {
            let mut shape = lead.clone();
            shape.extend([q, q + mlen]);
            let ac = Var::from_tensor(&rng.randn(shape.clone(), DType::F64, &Device::Cpu).unwrap().affine(2.0, 0.0).unwrap()).unwrap();
            let bd = Var::from_tensor(&rng.randn(shape.clone(), DType::F64, &Device::Cpu).unwrap().affine(2.0, 0.0).unwrap()).unwrap();
            let up = rng.randn(shape.clone(), DType::F64, &Device::Cpu).unwrap();
            let fused = rel_probs(ac.as_tensor(), bd.as_tensor(), 0.3, mlen, local).unwrap();
            let reference = composed(ac.as_tensor(), bd.as_tensor(), 0.3, mlen, local);
            if local > 0 {
                // A query sees exactly its last `local` keys.
                let rows: Vec<f64> = fused.flatten_all().unwrap().to_vec1().unwrap();
                let k = q + mlen;
                for (r, row) in rows.chunks(k).enumerate() {
                    let i = r % q;
                    let seen: Vec<usize> = (0..k).filter(|&j| row[j] > 0.0).collect();
                    assert_eq!(seen, ((i + mlen + 1).saturating_sub(local)..=i + mlen).collect::<Vec<_>>());
                }
            }
            assert!(max_abs_diff(&fused, &reference).unwrap() < 1e-14, "{shape:?}");
            let g1 = (fused * &up).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (reference * &up).unwrap().sum_all().unwrap().backward().unwrap();
            for v in [&ac, &bd] {
                // Entries no query sees: the composed path's gradient is 0 there too.
                let d = max_abs_diff(g1.get(v.as_tensor()).unwrap(), g2.get(v.as_tensor()).unwrap()).unwrap();
                assert!(d < 1e-13, "{shape:?}: {d}");
            }
            // f32 against f64.
            let f = rel_probs(&ac.as_tensor().to_dtype(DType::F32).unwrap(), &bd.as_tensor().to_dtype(DType::F32).unwrap(), 0.3, mlen, local).unwrap();
            assert!(max_abs_diff(&f, &composed(ac.as_tensor(), bd.as_tensor(), 0.3, mlen, local)).unwrap() < 1e-6);
        }
    }

    #[test]
    fn the_gradient_matches_finite_differences() {
        let mut rng = DeqRng::new(8);
        let (q, mlen) = (3, 2);
        let ac = Var::from_tensor(&rng.randn((2, q, q + mlen), DType::F64, &Device::Cpu).unwrap()).unwrap();
        let bd = Var::from_tensor(&rng.randn((2, q, q + mlen), DType::F64, &Device::Cpu).unwrap()).unwrap();
        let up = rng.randn((2, q, q + mlen), DType::F64, &Device::Cpu).unwrap();
        let loss = || rel_probs(ac.as_tensor(), bd.as_tensor(), 0.7, mlen, 3).unwrap().mul(&up).unwrap().sum_all().unwrap();
        let g = loss().backward().unwrap();
        for v in [&ac, &bd] {
            let gv: Vec<f64> = g.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let base: Vec<f64> = v.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            for idx in 0..base.len() {
                let at = |d: f64| {
                    let mut x = base.clone();
                    x[idx] += d;
                    v.set(&Tensor::from_vec(x, v.shape(), &Device::Cpu).unwrap()).unwrap();
                    loss().to_scalar::<f64>().unwrap()
                };
                let fd = (at(1e-6) - at(-1e-6)) / 2e-6;
                at(0.0);
                assert!((fd - gv[idx]).abs() < 1e-8, "entry {idx}: {fd} against {}", gv[idx]);
            }
        }
    }

    #[test]
    fn f32_gradients_rank_2_inputs_and_other_dtypes() {
        let mut rng = DeqRng::new(12);
        let (q, mlen, local) = (5, 3, 4);
        let ac = Var::from_tensor(&rng.randn((2, q, q + mlen), DType::F64, &Device::Cpu).unwrap()).unwrap();
        let bd = Var::from_tensor(&rng.randn((2, q, q + mlen), DType::F64, &Device::Cpu).unwrap()).unwrap();
        let up = rng.randn((2, q, q + mlen), DType::F64, &Device::Cpu).unwrap();
        let g64 = rel_probs(ac.as_tensor(), bd.as_tensor(), 0.5, mlen, local).unwrap().mul(&up).unwrap().sum_all().unwrap().backward().unwrap();
        // The f32 backward against the f64 one.
        let f32 = |t: &Tensor| Var::from_tensor(&t.to_dtype(DType::F32).unwrap()).unwrap();
        let (a32, b32) = (f32(ac.as_tensor()), f32(bd.as_tensor()));
        let g32 = rel_probs(a32.as_tensor(), b32.as_tensor(), 0.5, mlen, local).unwrap().mul(&up.to_dtype(DType::F32).unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
        for (v64, v32) in [(&ac, &a32), (&bd, &b32)] {
            assert!(max_abs_diff(g32.get(v32.as_tensor()).unwrap(), g64.get(v64.as_tensor()).unwrap()).unwrap() < 1e-5);
        }
        // A single (qlen, klen) matrix is the batch of one, forward and backward.
        let (a2, b2) = (Var::from_tensor(&ac.as_tensor().get(1).unwrap()).unwrap(), Var::from_tensor(&bd.as_tensor().get(1).unwrap()).unwrap());
        let p2 = rel_probs(a2.as_tensor(), b2.as_tensor(), 0.5, mlen, local).unwrap();
        let p3 = rel_probs(ac.as_tensor(), bd.as_tensor(), 0.5, mlen, local).unwrap();
        assert!(max_abs_diff(&p2, &p3.get(1).unwrap()).unwrap() < 1e-15);
        let g2 = p2.mul(&up.get(1).unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(max_abs_diff(g2.get(a2.as_tensor()).unwrap(), &g64.get(ac.as_tensor()).unwrap().get(1).unwrap()).unwrap() < 1e-15);
        assert!(max_abs_diff(g2.get(b2.as_tensor()).unwrap(), &g64.get(bd.as_tensor()).unwrap().get(1).unwrap()).unwrap() < 1e-15);
        // Rank 1 is refused; f16 takes the composed path.
        let row = Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap();
        assert!(rel_probs(&row, &row, 1.0, 0, 0).is_err());
        let h = |t: &Tensor| t.to_dtype(DType::F16).unwrap();
        let p16 = rel_probs(&h(ac.as_tensor()), &h(bd.as_tensor()), 0.5, mlen, local).unwrap();
        assert!(max_abs_diff(&p16, &p3).unwrap() < 5e-3);
    }

    #[test]
    fn bad_shapes_are_refused() {
        let t = Tensor::zeros((2, 3, 4), DType::F32, &Device::Cpu).unwrap();
        assert!(rel_probs(&t, &t, 1.0, 2, 0).unwrap_err().to_string().contains("4 keys for 3 queries"));
        let u = Tensor::zeros((2, 3, 5), DType::F32, &Device::Cpu).unwrap();
        assert!(rel_probs(&t, &u, 1.0, 1, 0).is_err());
        let mixed = rel_probs(&t, &t.to_dtype(DType::F64).unwrap(), 1.0, 1, 0);
        assert!(mixed.is_err());
    }
}
