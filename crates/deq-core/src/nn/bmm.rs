//! Batched products of many small matrices, `(..., m, k) x (..., k, n)`, with the batch
//! spread over the threads and each product single-threaded. candle's CPU matmul runs the
//! batch one product at a time, each split over every thread: for attention's
//! `(heads * batch)` products of `70 x 64` by `64 x 140` that is 128 thread synchronisations
//! per product and about 17 GFLOP/s on 2 cores, against 80-100 GFLOP/s here. Operands may be
//! row-major or transposed (column-major) in their last two dimensions, so the backward
//! products `g b^T` and `a^T g` read the saved operands without copies. Other devices,
//! dtypes and layouts use candle's `matmul`.

use super::float::KernelFloat;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use gemm::{gemm, Parallelism};
use rayon::prelude::*;

struct Bmm;

/// An operand's batch size, rows, columns, offset, batch stride and (row, column) strides,
/// when it is row- or column-major in its last two dimensions with packed batches.
#[derive(Debug, Clone, Copy)]
struct Operand {
    batch: usize,
    rows: usize,
    cols: usize,
    offset: usize,
    batch_stride: usize,
    rs: isize,
    cs: isize,
}

fn operand(l: &Layout) -> Option<Operand> {
    let dims = l.dims();
    let st = l.stride();
    let r = dims.len();
    if r < 2 {
        return None;
    }
    let (rows, cols) = (dims[r - 2], dims[r - 1]);
    let (rs, cs) = (st[r - 2], st[r - 1]);
    let packed = (rs == cols && cs == 1) || (rs == 1 && cs == rows) || rows <= 1 || cols <= 1;
    if !packed {
        return None;
    }
    let mut expect = rows * cols;
    for i in (0..r - 2).rev() {
        if dims[i] > 1 && st[i] != expect {
            return None;
        }
        expect *= dims[i];
    }
    let batch = dims[..r - 2].iter().product();
    Some(Operand { batch, rows, cols, offset: l.start_offset(), batch_stride: rows * cols, rs: rs as isize, cs: cs as isize })
}

/// Raw pointers shared by the threads (each writes its own output block).
#[derive(Clone, Copy)]
struct Ptr(usize);

fn run<T: KernelFloat>(a: &[T], oa: Operand, b: &[T], ob: Operand) -> Vec<T> {
    let (m, k, n) = (oa.rows, oa.cols, ob.cols);
    let mut out = vec![T::default(); oa.batch * m * n];
    let (pa, pb) = (Ptr(a.as_ptr() as usize), Ptr(b.as_ptr() as usize));
    out.par_chunks_mut((m * n).max(1)).enumerate().for_each(|(i, o)| {
        let (pa, pb) = (pa, pb);
        // SAFETY: `operand` checked that batch `i` of each input lies inside its slice with the
        // given strides; `o` is this batch's own `m x n` output block, written row-major.
        unsafe {
            gemm(
                m,
                n,
                k,
                o.as_mut_ptr(),
                1,
                n as isize,
                false,
                (pa.0 as *const T).add(oa.offset + i * oa.batch_stride),
                oa.cs,
                oa.rs,
                (pb.0 as *const T).add(ob.offset + i * ob.batch_stride),
                ob.cs,
                ob.rs,
                T::from64(0.0),
                T::from64(1.0),
                false,
                false,
                false,
                Parallelism::None,
            )
        }
    });
    out
}

fn operands(l1: &Layout, l2: &Layout) -> Result<(Operand, Operand, Shape)> {
    let (oa, ob) = match (operand(l1), operand(l2)) {
        (Some(a), Some(b)) => (a, b),
        _ => candle_core::bail!("bmm: operands must be row- or column-major in their last two dimensions"),
    };
    let (d1, d2) = (l1.dims(), l2.dims());
    if d1.len() != d2.len() || d1[..d1.len() - 2] != d2[..d2.len() - 2] || oa.cols != ob.rows {
        candle_core::bail!("bmm: shapes {d1:?} and {d2:?} do not multiply");
    }
    let mut out = d1[..d1.len() - 1].to_vec();
    out.push(ob.cols);
    Ok((oa, ob, Shape::from(out)))
}

impl CustomOp2 for Bmm {
    fn name(&self) -> &'static str {
        "deq-bmm"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (oa, ob, shape) = operands(l1, l2)?;
        let out = match (s1, s2) {
            (CpuStorage::F32(a), CpuStorage::F32(b)) => CpuStorage::F32(run(a, oa, b, ob)),
            (CpuStorage::F64(a), CpuStorage::F64(b)) => CpuStorage::F64(run(a, oa, b, ob)),
            _ => candle_core::bail!("bmm: two f32 or two f64 operands"),
        };
        Ok((out, shape))
    }

    fn bwd(&self, a: &Tensor, b: &Tensor, _res: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let r = a.rank();
        let g = g.contiguous()?;
        Ok((Some(bmm(&g, &b.transpose(r - 2, r - 1)?)?), Some(bmm(&a.transpose(r - 2, r - 1)?, &g)?)))
    }
}

/// `a x b` over matching batch dimensions (no broadcasting): `(..., m, k) x (..., k, n)`.
pub fn bmm(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let fused = a.device().is_cpu() && matches!(a.dtype(), DType::F32 | DType::F64) && a.dtype() == b.dtype() && a.rank() >= 3 && a.rank() == b.rank();
    if !fused {
        return a.matmul(b);
    }
    let prep = |t: &Tensor| -> Result<Tensor> { if operand(t.layout()).is_some() { Ok(t.clone()) } else { t.contiguous() } };
    let (a, b) = (prep(a)?, prep(b)?);
    a.apply_op2(&b, Bmm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::max_abs_diff;
    use crate::rng::DeqRng;
    use candle_core::{Device, Var};

    #[test]
    fn equals_candles_matmul_in_every_layout_with_gradients() {
        let mut rng = DeqRng::new(6);
        for dt in [DType::F64, DType::F32] {
            let a = Var::from_tensor(&rng.randn((3, 5, 7, 4), DType::F64, &Device::Cpu).unwrap().to_dtype(dt).unwrap()).unwrap();
            let b = Var::from_tensor(&rng.randn((3, 5, 6, 4), DType::F64, &Device::Cpu).unwrap().to_dtype(dt).unwrap()).unwrap();
            let up = rng.randn((3, 5, 7, 6), DType::F64, &Device::Cpu).unwrap().to_dtype(dt).unwrap();
            // b transposed (column-major), as attention's k^T.
            let bt = b.as_tensor().transpose(2, 3).unwrap();
            let ours = bmm(a.as_tensor(), &bt).unwrap();
            let theirs = a.as_tensor().matmul(&bt.contiguous().unwrap()).unwrap();
            let tol = if dt == DType::F64 { 1e-12 } else { 1e-4 };
            assert!(max_abs_diff(&ours, &theirs).unwrap() < tol, "{dt:?}");
            let g1 = (ours * &up).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (theirs.clone() * &up).unwrap().sum_all().unwrap().backward().unwrap();
            for v in [&a, &b] {
                assert!(max_abs_diff(g1.get(v.as_tensor()).unwrap(), g2.get(v.as_tensor()).unwrap()).unwrap() < tol, "{dt:?}");
            }
            // Both transposed, and a strided input that is neither (copied first).
            let at = a.as_tensor().transpose(2, 3).unwrap().contiguous().unwrap().transpose(2, 3).unwrap();
            assert!(max_abs_diff(&bmm(&at, &bt).unwrap(), &theirs).unwrap() < tol);
            let sliced = a.as_tensor().narrow(3, 1, 3).unwrap();
            let b3 = bt.narrow(2, 0, 3).unwrap();
            assert!(max_abs_diff(&bmm(&sliced, &b3).unwrap(), &sliced.contiguous().unwrap().matmul(&b3.contiguous().unwrap()).unwrap()).unwrap() < tol);
        }
        let a = Tensor::zeros((2, 3, 4), DType::F32, &Device::Cpu).unwrap();
        assert!(bmm(&a, &Tensor::zeros((2, 5, 4), DType::F32, &Device::Cpu).unwrap()).is_err());
        assert!(bmm(&a, &Tensor::zeros((3, 4, 4), DType::F32, &Device::Cpu).unwrap()).is_err());
    }
}
