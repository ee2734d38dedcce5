//! `log_softmax(x)[i, c_i]` for one column `c_i` per row, in one pass: the log-likelihood of
//! targets (cross-entropy) without the `(rows, classes)` log-softmax matrix, its row copies
//! and the scatter of a gather's backward. The backward pass is `g_i * (onehot(c_i) - softmax(x_i))`
//! per row, from the saved output (`lse_i = x[i, c_i] - out_i`), in one pass too.
//!
//! On the CPU (f32 and f64; rows in parallel, sums in f64) this is a custom op; elsewhere
//! candle's `log_softmax` and `gather`, which candle differentiates.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor, D};
use super::float::KernelFloat;
use rayon::prelude::*;

struct Pick {
    cols: Vec<u32>,
}

fn forward<T: KernelFloat>(x: &[T], d: usize, cols: &[u32]) -> Vec<T> {
    x.par_chunks(d)
        .zip(cols.par_iter())
        .map(|(row, &c)| {
            let max = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v.to64()));
            let sum: f64 = row.iter().map(|&v| v.exp_minus(max)).sum();
            T::from64(row[c as usize].to64() - max - sum.ln())
        })
        .collect()
}

fn backward<T: KernelFloat>(x: &[T], out: &[T], g: &[T], d: usize, cols: &[u32]) -> Vec<T> {
    let mut dx = vec![T::default(); x.len()];
    dx.par_chunks_mut(d).zip(x.par_chunks(d)).enumerate().for_each(|(i, (dr, row))| {
        let c = cols[i] as usize;
        let lse = row[c].to64() - out[i].to64();
        let gi = g[i].to64();
        for (o, &v) in dr.iter_mut().zip(row) {
            *o = T::from64(-gi * v.exp_minus(lse));
        }
        dr[c] = T::from64(dr[c].to64() + gi);
    });
    dx
}

fn rows_cols(l: &Layout, n_cols: usize) -> Result<(usize, usize, usize)> {
    let (n, d) = l.shape().dims2()?;
    if n != n_cols {
        candle_core::bail!("log_softmax_pick: {n} rows and {n_cols} columns to pick");
    }
    let (a, _) = l.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("log_softmax_pick: a contiguous input expected".into()))?;
    Ok((n, d, a))
}

impl CustomOp1 for Pick {
    fn name(&self) -> &'static str {
        "deq-log-softmax-pick"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, d, a) = rows_cols(l, self.cols.len())?;
        let out = match s {
            CpuStorage::F32(v) => CpuStorage::F32(forward(&v[a..a + n * d], d, &self.cols)),
            CpuStorage::F64(v) => CpuStorage::F64(forward(&v[a..a + n * d], d, &self.cols)),
            _ => candle_core::bail!("log_softmax_pick: f32 or f64"),
        };
        Ok((out, Shape::from(n)))
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (n, d) = arg.dims2()?;
        let dev = arg.device();
        // The logits are read in place (the op made them contiguous).
        let (storage, layout) = arg.storage_and_layout();
        let (a, _) = layout.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("log_softmax_pick: a contiguous input expected".into()))?;
        let dx = match &*storage {
            candle_core::Storage::Cpu(CpuStorage::F32(v)) => Tensor::from_vec(backward(&v[a..a + n * d], &res.to_vec1::<f32>()?, &grad.to_vec1::<f32>()?, d, &self.cols), (n, d), dev)?,
            candle_core::Storage::Cpu(CpuStorage::F64(v)) => Tensor::from_vec(backward(&v[a..a + n * d], &res.to_vec1::<f64>()?, &grad.to_vec1::<f64>()?, d, &self.cols), (n, d), dev)?,
            _ => candle_core::bail!("log_softmax_pick: no backward for {:?} on {:?}", arg.dtype(), arg.device().location()),
        };
        Ok(Some(dx))
    }
}

/// `log_softmax(logits)[i, cols[i]]` for `logits` `(n, classes)`: `(n,)`. Columns outside
/// `0..classes` are an error.
pub fn log_softmax_pick(logits: &Tensor, cols: &[u32]) -> Result<Tensor> {
    let (n, d) = logits.dims2()?;
    if cols.len() != n {
        candle_core::bail!("log_softmax_pick: {n} rows and {} columns to pick", cols.len());
    }
    if let Some(&c) = cols.iter().find(|&&c| c as usize >= d) {
        candle_core::bail!("log_softmax_pick: column {c} of {d}");
    }
    if logits.device().is_cpu() && matches!(logits.dtype(), DType::F32 | DType::F64) {
        logits.contiguous()?.apply_op1(Pick { cols: cols.to_vec() })
    } else {
        let idx = Tensor::new(cols, logits.device())?.unsqueeze(1)?;
        candle_nn::ops::log_softmax(logits, D::Minus1)?.gather(&idx, 1)?.squeeze(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::max_abs_diff;
    use crate::rng::DeqRng;
    use candle_core::{Device, Var};

    fn composed(x: &Tensor, cols: &[u32]) -> Tensor {
        let idx = Tensor::new(cols, x.device()).unwrap().unsqueeze(1).unwrap();
        candle_nn::ops::log_softmax(x, D::Minus1).unwrap().gather(&idx, 1).unwrap().squeeze(1).unwrap()
    }

    #[test]
    fn equals_log_softmax_and_gather_with_their_gradient() {
        let mut rng = DeqRng::new(2);
        let x = Var::from_tensor(&rng.randn((7, 13), DType::F64, &Device::Cpu).unwrap().affine(4.0, 1.0).unwrap()).unwrap();
        let cols = [0u32, 12, 5, 5, 3, 12, 1];
        let up = rng.randn(7, DType::F64, &Device::Cpu).unwrap();
        let ours = log_softmax_pick(x.as_tensor(), &cols).unwrap();
        let theirs = composed(x.as_tensor(), &cols);
        assert!(max_abs_diff(&ours, &theirs).unwrap() < 1e-13);
        let g1 = (ours * &up).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (theirs.clone() * &up).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(max_abs_diff(g1.get(x.as_tensor()).unwrap(), g2.get(x.as_tensor()).unwrap()).unwrap() < 1e-13);
        // Central differences of the picked log-probabilities' weighted sum.
        let base: Vec<f64> = x.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        let gv: Vec<f64> = g1.get(x.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let f = |v: &[f64]| (log_softmax_pick(&Tensor::from_vec(v.to_vec(), (7, 13), &Device::Cpu).unwrap(), &cols).unwrap() * &up).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
        for i in (0..base.len()).step_by(5) {
            let (mut p, mut m) = (base.clone(), base.clone());
            p[i] += 1e-6;
            m[i] -= 1e-6;
            let fd = (f(&p) - f(&m)) / 2e-6;
            assert!((fd - gv[i]).abs() < 1e-8, "{i}: {fd} against {}", gv[i]);
        }
        // f32 against f64, with a large logit range.
        let x32 = x.as_tensor().to_dtype(DType::F32).unwrap();
        assert!(max_abs_diff(&log_softmax_pick(&x32, &cols).unwrap(), &theirs).unwrap() < 1e-5);
        let x32v = Var::from_tensor(&x32).unwrap();
        let g = (log_softmax_pick(x32v.as_tensor(), &cols).unwrap() * up.to_dtype(DType::F32).unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(max_abs_diff(g.get(x32v.as_tensor()).unwrap(), g2.get(x.as_tensor()).unwrap()).unwrap() < 1e-5);
    }

    #[test]
    fn bad_columns_and_other_dtypes() {
        let x = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
        assert!(log_softmax_pick(&x, &[0, 3]).unwrap_err().to_string().contains("column 3 of 3"));
        assert!(log_softmax_pick(&x, &[0]).unwrap_err().to_string().contains("2 rows"));
        let h = log_softmax_pick(&x.to_dtype(DType::BF16).unwrap(), &[0, 2]).unwrap();
        assert!((h.to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap()[1] + 3f32.ln()).abs() < 1e-2);
    }
}
