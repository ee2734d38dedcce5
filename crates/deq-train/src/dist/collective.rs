//! The collective operations a data-parallel trainer needs, as a trait: the single-process
//! identity ([`SingleProcess`]), an in-process group of threads ([`super::ThreadGroup`], which
//! lets `cargo test` prove a world-N run equal to a world-1 run), and later NCCL. On top of the
//! trait: the bucketed gradient all-reduce, the broadcast of the initial parameters and the
//! reduction of metrics, written once for every implementation.

use super::DistContext;
use crate::error::{Result, TrainError};
use candle_core::backprop::GradStore;
use candle_core::{DType, Shape, Tensor, Var};

/// Gradient bucket size of [`Collective::all_reduce_mean`], in elements (PyTorch DDP's 25 MiB
/// of f32); `DEQ_BUCKET_CAP_MB` overrides it (see [`bucket_elems`]).
pub const DEFAULT_BUCKET_ELEMS: usize = 25 * 1024 * 1024 / 4;

/// The gradient bucket size in elements: `DEQ_BUCKET_CAP_MB` MiB of f32 (DDP's
/// `bucket_cap_mb`), or [`DEFAULT_BUCKET_ELEMS`]. A value that is not a positive number is an
/// error naming the variable.
pub fn bucket_elems() -> Result<usize> {
    parse_bucket_cap(std::env::var("DEQ_BUCKET_CAP_MB").ok().as_deref())
}

fn parse_bucket_cap(v: Option<&str>) -> Result<usize> {
    match v {
        None => Ok(DEFAULT_BUCKET_ELEMS),
        Some(v) => match v.trim().parse::<f64>() {
            Ok(mb) if mb > 0.0 && mb.is_finite() => Ok(((mb * 1024.0 * 1024.0 / 4.0) as usize).max(1)),
            _ => Err(TrainError::Config { key: "DEQ_BUCKET_CAP_MB".into(), message: format!("`{v}` is not a positive number of MiB") }),
        },
    }
}

/// Collective operations over the processes (or threads) of one job. Every rank must call the
/// same operations in the same order with tensors of the same shape and dtype.
pub trait Collective: Send + Sync {
    /// Where this rank sits.
    fn context(&self) -> &DistContext;
    /// The element-wise sum of `t` over all ranks (summed in rank order, so every rank gets
    /// bit-identical values and a run is reproducible).
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor>;
    /// Rank `root`'s `t` on every rank.
    fn broadcast(&self, t: &Tensor, root: usize) -> Result<Tensor>;
    /// Returns when every rank has called it.
    fn barrier(&self) -> Result<()>;

    /// Replaces every gradient of `vars` by its mean over the ranks, reduced in flattened
    /// buckets of [`bucket_elems`] elements (see [`all_reduce_mean_bucketed`]).
    fn all_reduce_mean(&self, grads: &mut GradStore, vars: &[Var]) -> Result<()> {
        all_reduce_mean_bucketed(self, grads, vars, bucket_elems()?)
    }
}

/// One process: every collective is the identity.
#[derive(Debug, Clone, Default)]
pub struct SingleProcess(DistContext);

impl Collective for SingleProcess {
    fn context(&self) -> &DistContext {
        &self.0
    }
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        Ok(t.clone())
    }
    fn broadcast(&self, t: &Tensor, _root: usize) -> Result<Tensor> {
        Ok(t.clone())
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
    fn all_reduce_mean(&self, _grads: &mut GradStore, _vars: &[Var]) -> Result<()> {
        Ok(())
    }
}

/// Replaces the gradient of every var in `vars` by its mean over the ranks of `c`. Gradients
/// are flattened into f32 or f64 buckets of at most `bucket_elems` elements (one collective
/// call per bucket instead of one per tensor; a tensor larger than a bucket gets its own). A
/// var without a gradient on this rank counts as zeros, so that every rank reduces the same
/// buckets; after the call every var has a gradient.
pub fn all_reduce_mean_bucketed<C: Collective + ?Sized>(c: &C, grads: &mut GradStore, vars: &[Var], bucket_elems: usize) -> Result<()> {
    let world = c.context().world_size;
    if world == 1 || vars.is_empty() {
        return Ok(());
    }
    let bucket_elems = bucket_elems.max(1);
    let mut start = 0;
    while start < vars.len() {
        // The bucket: vars[start..end], flattened, one dtype.
        let dtype = vars[start].dtype();
        let mut end = start;
        let mut elems = 0;
        while end < vars.len() && vars[end].dtype() == dtype && (end == start || elems + vars[end].elem_count() <= bucket_elems) {
            elems += vars[end].elem_count();
            end += 1;
        }
        let parts = vars[start..end]
            .iter()
            .map(|v| match grads.get(v.as_tensor()) {
                Some(g) => g.flatten_all(),
                None => Tensor::zeros(v.elem_count(), dtype, v.device()),
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let flat = Tensor::cat(&parts, 0)?;
        let mean = c.all_reduce_sum(&flat)?.affine(1.0 / world as f64, 0.0)?;
        let mut offset = 0;
        for v in &vars[start..end] {
            let n = v.elem_count();
            grads.insert(v.as_tensor(), mean.narrow(0, offset, n)?.reshape(v.shape())?);
            offset += n;
        }
        start = end;
    }
    Ok(())
}

/// Sets every var to rank 0's value (the initial parameters of a run, so that ranks that drew
/// or loaded them differently start equal).
pub fn broadcast_vars<C: Collective + ?Sized>(c: &C, vars: &[Var]) -> Result<()> {
    if c.context().world_size == 1 {
        return Ok(());
    }
    for v in vars {
        v.set(&c.broadcast(v.as_tensor(), 0)?)?;
    }
    Ok(())
}

/// The sums over the ranks of `values` (metrics: loss sums, counts).
pub fn all_reduce_sum_f64<C: Collective + ?Sized>(c: &C, values: &[f64]) -> Result<Vec<f64>> {
    if c.context().world_size == 1 {
        return Ok(values.to_vec());
    }
    let t = Tensor::new(values, &candle_core::Device::Cpu)?;
    Ok(c.all_reduce_sum(&t)?.to_dtype(DType::F64)?.to_vec1()?)
}

/// Whether any rank received SIGINT or SIGTERM ([`crate::signals`]): every rank gets the same
/// answer, so all of them stop after the same step (one scalar all-reduce when there are
/// several ranks). The signal is this rank's, or SIGTERM when only another rank saw one.
pub fn agree_on_signal<C: Collective + ?Sized>(c: &C) -> Result<Option<i32>> {
    let mine = crate::signals::requested();
    if c.context().world_size == 1 {
        return Ok(mine);
    }
    let any = all_reduce_sum_f64(c, &[mine.map_or(0.0, |_| 1.0)])?[0] > 0.0;
    Ok(if any { Some(mine.unwrap_or(15)) } else { None })
}

/// The error of a collective whose ranks disagree (shapes, dtypes, a rank that left).
pub(crate) fn mismatch(message: impl Into<String>) -> TrainError {
    TrainError::Config { key: "collective".into(), message: message.into() }
}

/// One rank's contribution to a collective round: values (as f64, which holds every f32, f16
/// and bf16 value exactly), shape and dtype.
pub(crate) type Part = (Vec<f64>, Shape, DType);

/// `t` as a [`Part`].
pub(crate) fn to_parts(t: &Tensor) -> Result<Part> {
    Ok((t.flatten_all()?.to_dtype(DType::F64)?.to_vec1()?, t.shape().clone(), t.dtype()))
}

/// The tensor of a [`Part`] on `dev`.
pub(crate) fn from_parts(p: &Part, dev: &candle_core::Device) -> Result<Tensor> {
    Ok(Tensor::from_slice(&p.0, p.1.clone(), dev)?.to_dtype(p.2)?)
}

/// The element-wise sum of the ranks' parts, added in rank order in f64 (every implementation
/// reduces this way, so that a multi-process run and an in-process one agree bit for bit).
pub(crate) fn sum_in_rank_order(slots: &[Option<Part>]) -> std::result::Result<Part, String> {
    let first = slots[0].as_ref().ok_or("all_reduce: rank 0 sent nothing")?;
    let mut sum = vec![0f64; first.0.len()];
    for (rank, s) in slots.iter().enumerate() {
        let s = s.as_ref().ok_or_else(|| format!("all_reduce: rank {rank} sent nothing"))?;
        if s.1 != first.1 || s.2 != first.2 || s.0.len() != first.0.len() {
            return Err(format!("all_reduce: rank {rank} sent {:?} {:?}, rank 0 {:?} {:?}", s.1, s.2, first.1, first.2));
        }
        sum.iter_mut().zip(&s.0).for_each(|(a, b)| *a += b);
    }
    Ok((sum, first.1.clone(), first.2))
}

/// The root's part, after checking that every rank expects its shape and dtype.
pub(crate) fn pick_root(slots: &[Option<Part>], root: usize) -> std::result::Result<Part, String> {
    let r = slots.get(root).and_then(Option::as_ref).ok_or_else(|| format!("broadcast: root rank {root} sent nothing"))?;
    for (rank, s) in slots.iter().enumerate() {
        let s = s.as_ref().ok_or_else(|| format!("broadcast: rank {rank} sent nothing"))?;
        if s.1 != r.1 || s.2 != r.2 {
            return Err(format!("broadcast: rank {rank} expects {:?} {:?}, the root sends {:?} {:?}", s.1, s.2, r.1, r.2));
        }
    }
    Ok(r.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use std::sync::Mutex;

    /// A world of two whose other rank holds zeros: records the size of every reduction.
    struct Counting {
        ctx: DistContext,
        calls: Mutex<Vec<usize>>,
    }

    impl Collective for Counting {
        fn context(&self) -> &DistContext {
            &self.ctx
        }
        fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
            self.calls.lock().unwrap().push(t.elem_count());
            Ok(t.clone())
        }
        fn broadcast(&self, t: &Tensor, _root: usize) -> Result<Tensor> {
            Ok(t.clone())
        }
        fn barrier(&self) -> Result<()> {
            Ok(())
        }
    }

    fn counting(world: usize) -> Counting {
        Counting { ctx: DistContext { world_size: world, local_world_size: world, ..Default::default() }, calls: Mutex::new(Vec::new()) }
    }

    #[test]
    fn buckets_pack_consecutive_vars_of_one_dtype_up_to_the_cap() {
        let dev = Device::Cpu;
        let sizes = [3usize, 2, 5, 1, 1];
        let dtypes = [DType::F32, DType::F32, DType::F32, DType::F32, DType::F64];
        let vars: Vec<Var> = sizes.iter().zip(dtypes).map(|(&n, d)| Var::zeros(n, d, &dev).unwrap()).collect();
        // loss = sum_k (k + 1) * sum(var_k): var k's gradient is k + 1 everywhere.
        let mut loss = Tensor::new(0f64, &dev).unwrap();
        for (k, v) in vars.iter().enumerate() {
            loss = (loss + (v.as_tensor().to_dtype(DType::F64).unwrap().sum_all().unwrap() * (k as f64 + 1.0)).unwrap()).unwrap();
        }
        let c = counting(2);
        let mut g = loss.backward().unwrap();
        all_reduce_mean_bucketed(&c, &mut g, &vars, 5).unwrap();
        // [3 + 2], [5] (a var alone may fill a bucket), [1] (f32), [1] (f64: a dtype change).
        assert_eq!(*c.calls.lock().unwrap(), vec![5, 5, 1, 1]);
        for (k, v) in vars.iter().enumerate() {
            let got = g.get(v.as_tensor()).unwrap().to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap();
            assert_eq!(got, vec![(k as f64 + 1.0) / 2.0; sizes[k]], "var {k}: its own slice of the bucket, halved");
        }
        // A world of one reduces nothing; the trait's method uses the configured bucket size.
        let one = counting(1);
        all_reduce_mean_bucketed(&one, &mut g, &vars, 5).unwrap();
        assert!(one.calls.lock().unwrap().is_empty());
        let c = counting(2);
        c.all_reduce_mean(&mut g, &vars).unwrap();
        assert_eq!(*c.calls.lock().unwrap(), vec![11, 1], "one bucket per dtype at the default cap");
    }

    #[test]
    fn bucket_cap_reads_megabytes_of_f32() {
        assert_eq!(DEFAULT_BUCKET_ELEMS * 4, 25 << 20);
        assert_eq!(parse_bucket_cap(None).unwrap(), DEFAULT_BUCKET_ELEMS);
        assert_eq!(parse_bucket_cap(Some("1")).unwrap(), 1 << 18);
        assert_eq!(parse_bucket_cap(Some(" 0.5 ")).unwrap(), 1 << 17);
        for bad in ["0", "-2", "x", "inf"] {
            let e = parse_bucket_cap(Some(bad)).unwrap_err().to_string();
            assert!(e.contains("DEQ_BUCKET_CAP_MB") && e.contains(bad), "{e}");
        }
    }

    #[test]
    fn rounds_refuse_parts_that_disagree() {
        let part = |n: usize, d: DType| Some((vec![1.0; n], Shape::from(n), d));
        let ok = sum_in_rank_order(&[part(2, DType::F32), part(2, DType::F32)]).unwrap();
        assert_eq!(ok.0, vec![2.0, 2.0]);
        let e = sum_in_rank_order(&[part(2, DType::F32), part(2, DType::F64)]).unwrap_err();
        assert!(e.contains("rank 1 sent [2] F64, rank 0 [2] F32"), "{e}");
        let e = sum_in_rank_order(&[part(2, DType::F32), part(3, DType::F32)]).unwrap_err();
        assert!(e.contains("rank 1 sent [3]"), "{e}");
        assert!(sum_in_rank_order(&[part(2, DType::F32), None]).unwrap_err().contains("rank 1 sent nothing"));
        assert_eq!(pick_root(&[part(2, DType::F32), Some((vec![7.0, 8.0], Shape::from(2), DType::F32))], 1).unwrap().0, vec![7.0, 8.0]);
        let e = pick_root(&[part(2, DType::F64), part(2, DType::F32)], 1).unwrap_err();
        assert!(e.contains("rank 0 expects [2] F64"), "{e}");
        let e = pick_root(&[part(3, DType::F32), part(2, DType::F32)], 1).unwrap_err();
        assert!(e.contains("rank 0 expects [3] F32"), "{e}");
    }
}
