//! The fused filter of `siren_like` layers, `sin(a + c + u)` for a matrix product `a`
//! (`(N, D)`), a bias `c` (`(D,)`) and the injected `u` (`(N, D)`): one pass forward instead of
//! three (two additions and the sine, each allocating an `(N, D)` tensor), and one pass
//! backward (`g cos(a + c + u)`, which is the gradient of both `a` and `u`; the bias gradient
//! is its column sum). f32 (vectorised sine) and f64 (`f64::sin`, exact: the path the
//! finite-difference tests take) on the CPU; other dtypes and devices use candle's ops.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

/// Rows per parallel task (about 64k elements at width 256).
const ROWS_PER_TASK: usize = 256;

fn threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()).max(1)
}

/// `out[n, j] = trig(a[n, j] + c[j] + u[n, j])` (`cos = false`: sin), parallel over rows.
fn fused(a: &[f32], c: &[f32], u: &[f32], width: usize, cos: bool, scale: Option<&[f32]>) -> Vec<f32> {
    let mut out = vec![0f32; a.len()];
    let chunk = ROWS_PER_TASK * width;
    let per_thread = a.len().div_ceil(threads()).div_ceil(chunk).max(1) * chunk;
    std::thread::scope(|sc| {
        for (t, o) in out.chunks_mut(per_thread).enumerate() {
            let start = t * per_thread;
            sc.spawn(move || {
                let mut buf = vec![0f32; chunk.min(o.len())];
                for (k, oc) in o.chunks_mut(chunk).enumerate() {
                    let s = start + k * chunk;
                    let b = &mut buf[..oc.len()];
                    // Chunks start on row boundaries: add the bias row by row.
                    for (r, row) in b.chunks_mut(width).enumerate() {
                        let o = s + r * width;
                        for (((x, &av), &uv), &cv) in row.iter_mut().zip(&a[o..o + width]).zip(&u[o..o + width]).zip(c) {
                            *x = av + cv + uv;
                        }
                    }
                    deq_core::ops::sincos_slice(b, oc, cos);
                    if let Some(g) = scale {
                        let len = oc.len();
                        oc.iter_mut().zip(&g[s..s + len]).for_each(|(v, g)| *v *= g);
                    }
                }
            });
        }
    });
    out
}

/// The f64 version (exact, serial).
fn fused64(a: &[f64], c: &[f64], u: &[f64], width: usize, cos: bool, scale: Option<&[f64]>) -> Vec<f64> {
    (0..a.len())
        .map(|i| {
            let x = a[i] + c[i % width] + u[i];
            let t = if cos { x.cos() } else { x.sin() };
            scale.map_or(t, |g| t * g[i])
        })
        .collect()
}

fn range(l: &Layout, what: &str) -> Result<std::ops::Range<usize>> {
    let (a, b) = l.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg(format!("fused sin: {what} must be contiguous")))?;
    Ok(a..b)
}

struct SinBiasAdd;

enum Grad {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

impl From<Vec<f32>> for Grad {
    fn from(v: Vec<f32>) -> Self {
        Grad::F32(v)
    }
}

impl CustomOp3 for SinBiasAdd {
    fn name(&self) -> &'static str {
        "deq-inr-sin-bias-add"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, d) = l1.shape().dims2()?;
        if l2.shape().dims() != [d] || l3.shape().dims() != [n, d] {
            candle_core::bail!("fused sin: shapes {:?}, {:?}, {:?}", l1.shape(), l2.shape(), l3.shape());
        }
        let (r1, r2, r3) = (range(l1, "a")?, range(l2, "c")?, range(l3, "u")?);
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(a), CpuStorage::F32(c), CpuStorage::F32(u)) => CpuStorage::F32(fused(&a[r1], &c[r2], &u[r3], d, false, None)),
            (CpuStorage::F64(a), CpuStorage::F64(c), CpuStorage::F64(u)) => CpuStorage::F64(fused64(&a[r1], &c[r2], &u[r3], d, false, None)),
            _ => candle_core::bail!("fused sin: f32 or f64 operands of one dtype"),
        };
        Ok((out, l1.shape().clone()))
    }

    fn bwd(&self, a: &Tensor, c: &Tensor, u: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, d) = a.dims2()?;
        let grad = grad.contiguous()?;
        // Read the operands in place (no copies of the (N, D) buffers).
        let ga = {
            let ((sa, la), (sc, lc), (su, lu), (sg, lg)) = (a.storage_and_layout(), c.storage_and_layout(), u.storage_and_layout(), grad.storage_and_layout());
            let (ra, rc, ru, rg) = (range(la, "a")?, range(lc, "c")?, range(lu, "u")?, range(lg, "grad")?);
            use candle_core::Storage::Cpu;
            match (&*sa, &*sc, &*su, &*sg) {
                (Cpu(CpuStorage::F32(a)), Cpu(CpuStorage::F32(c)), Cpu(CpuStorage::F32(u)), Cpu(CpuStorage::F32(g))) => fused(&a[ra], &c[rc], &u[ru], d, true, Some(&g[rg])).into(),
                (Cpu(CpuStorage::F64(a)), Cpu(CpuStorage::F64(c)), Cpu(CpuStorage::F64(u)), Cpu(CpuStorage::F64(g))) => Grad::F64(fused64(&a[ra], &c[rc], &u[ru], d, true, Some(&g[rg]))),
                _ => candle_core::bail!("fused sin backward: CPU f32 or f64 operands of one dtype"),
            }
        };
        let ga = match ga {
            Grad::F32(v) => Tensor::from_vec(v, (n, d), a.device())?,
            Grad::F64(v) => Tensor::from_vec(v, (n, d), a.device())?,
        };
        // Column sum by a ones-row product (GEMM) rather than a strided fold.
        let gc = Tensor::ones((1, n), ga.dtype(), ga.device())?.matmul(&ga)?.reshape(d)?;
        Ok((Some(ga.clone()), Some(gc), Some(ga)))
    }
}

/// `sin(a + c + u)` with `c` broadcast over the rows: the fused kernel for f32/f64 CPU
/// tensors, candle's ops (with deq-core's vectorised sine) otherwise.
pub fn sin_bias_add(a: &Tensor, c: &Tensor, u: &Tensor) -> Result<Tensor> {
    let float = matches!(a.dtype(), candle_core::DType::F32 | candle_core::DType::F64);
    if a.device().is_cpu() && float && c.dtype() == a.dtype() && u.dtype() == a.dtype() && a.rank() == 2 {
        return a.contiguous()?.apply_op3(&c.contiguous()?, &u.contiguous()?, SinBiasAdd);
    }
    deq_core::ops::sin(&(a.broadcast_add(c)? + u)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn fused_matches_the_unfused_ops_forward_and_backward() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = deq_core::rng::DeqRng::new(1);
        // Enough rows for several parallel tasks, and a ragged last chunk.
        let (n, d) = (1000, 7);
        let a = Var::from_tensor(&rng.randn((n, d), candle_core::DType::F32, &dev)?)?;
        let c = Var::from_tensor(&rng.randn(d, candle_core::DType::F32, &dev)?)?;
        let u = Var::from_tensor(&(rng.randn((n, d), candle_core::DType::F32, &dev)? * 30.0)?)?;
        let w = rng.randn((n, d), candle_core::DType::F32, &dev)?;
        let fused = sin_bias_add(a.as_tensor(), c.as_tensor(), u.as_tensor())?;
        let plain = (a.as_tensor().broadcast_add(c.as_tensor())? + u.as_tensor())?.sin()?;
        let diff = (&fused - &plain)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "forward {diff}");
        let g1 = (fused * &w)?.sum_all()?.backward()?;
        let g2 = (plain * &w)?.sum_all()?.backward()?;
        for v in [&a, &c, &u] {
            let (x, y) = (g1.get(v.as_tensor()).unwrap(), g2.get(v.as_tensor()).unwrap());
            let scale = y.abs()?.max_all()?.to_scalar::<f32>()?.max(1.0);
            let e = (x - y)?.abs()?.max_all()?.to_scalar::<f32>()? / scale;
            assert!(e < 1e-5, "gradient {e}");
        }
        Ok(())
    }
}
