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
/// of f32).
pub const DEFAULT_BUCKET_ELEMS: usize = 25 * 1024 * 1024 / 4;

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
    /// buckets of [`DEFAULT_BUCKET_ELEMS`] (see [`all_reduce_mean_bucketed`]).
    fn all_reduce_mean(&self, grads: &mut GradStore, vars: &[Var]) -> Result<()> {
        all_reduce_mean_bucketed(self, grads, vars, DEFAULT_BUCKET_ELEMS)
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
