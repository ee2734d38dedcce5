//! Samplers: sequential DDIM (any `eta`) and DDPM ancestral sampling ([`sequential`]), and
//! DEQ sampling, the fixed point of the whole DDIM trajectory ([`trajectory`]).
//!
//! A sampler walks a timestep sub-sequence `seq` (ascending, from [`crate::schedule::timesteps`])
//! from its largest step down: step `k = 0..T` goes from timestep `t_k = seq[T-1-k]` to
//! `n_k = seq[T-2-k]`, the last one to `-1` (`alpha_bar(-1) = 1`, so its output is the
//! predicted clean image). Stochastic samplers take their noise pre-drawn ([`StepNoise`]): step
//! `k` uses `noise[k]`, so sequential and DEQ sampling of the same noise reach the same image.

pub mod sequential;
pub mod trajectory;

use candle_core::{DType, Device, Tensor};
use deq_core::rng::DeqRng;

use crate::error::Result;
use crate::schedule::NoiseSchedule;
use crate::unet::UNet;

/// A noise prediction model `eps(x_t, t)`.
pub trait NoiseModel {
    /// The noise prediction for `x` `(N, C, H, W)` at float timesteps `t` `(N,)`.
    fn predict(&self, x: &Tensor, t: &Tensor) -> candle_core::Result<Tensor>;

    /// [`NoiseModel::predict`] without an autograd graph in the result: the same values, and
    /// the memory of the call's activations is released as soon as it returns (the weights are
    /// variables, so every call records a graph otherwise).
    fn predict_detached(&self, x: &Tensor, t: &Tensor) -> candle_core::Result<Tensor> {
        Ok(self.predict(x, t)?.detach())
    }
}

impl NoiseModel for UNet {
    fn predict(&self, x: &Tensor, t: &Tensor) -> candle_core::Result<Tensor> {
        self.forward(x, t)
    }
}

/// A model evaluated on at most `max_batch` images at a time (bounds the memory of DEQ
/// sampling, which evaluates the model on all `B * T` states of the trajectory at once).
pub struct Chunked<'a, M: NoiseModel + ?Sized> {
    /// The model.
    pub model: &'a M,
    /// Largest batch per call (0: no limit).
    pub max_batch: usize,
}

impl<M: NoiseModel + ?Sized> Chunked<'_, M> {
    /// `call` on chunks of at most `max_batch` images, concatenated.
    fn by_chunks(&self, x: &Tensor, t: &Tensor, call: impl Fn(&M, &Tensor, &Tensor) -> candle_core::Result<Tensor>) -> candle_core::Result<Tensor> {
        let n = x.dim(0)?;
        if self.max_batch == 0 || n <= self.max_batch {
            return call(self.model, x, t);
        }
        let mut outs = Vec::with_capacity(n.div_ceil(self.max_batch));
        for start in (0..n).step_by(self.max_batch) {
            let len = self.max_batch.min(n - start);
            outs.push(call(self.model, &x.narrow(0, start, len)?, &t.narrow(0, start, len)?)?);
        }
        Tensor::cat(&outs, 0)
    }
}

impl<M: NoiseModel + ?Sized> NoiseModel for Chunked<'_, M> {
    fn predict(&self, x: &Tensor, t: &Tensor) -> candle_core::Result<Tensor> {
        self.by_chunks(x, t, |m, x, t| m.predict(x, t))
    }

    /// Chunk by chunk, each detached before the next is computed: memory is one chunk's
    /// activations whatever the batch (with [`NoiseModel::predict`], every chunk's graph stays
    /// alive until the concatenation is dropped).
    fn predict_detached(&self, x: &Tensor, t: &Tensor) -> candle_core::Result<Tensor> {
        self.by_chunks(x, t, |m, x, t| m.predict_detached(x, t))
    }
}

/// DDIM's eta must be in `[0, 1]` (outside, the noise scale is negative or the update's
/// coefficients imaginary).
pub(crate) fn check_eta(eta: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&eta) {
        return Err(crate::error::DdimError::config("sample.eta", format!("{eta} must be in [0, 1]")));
    }
    Ok(())
}

/// The steps of one sampling run with their `alpha_bar` values.
#[derive(Debug, Clone, PartialEq)]
pub struct Steps {
    /// `t_k`, descending.
    pub t: Vec<usize>,
    /// `alpha_bar(t_k)`.
    pub a_t: Vec<f64>,
    /// `alpha_bar(n_k)` (1 for the last step).
    pub a_next: Vec<f64>,
}

impl Steps {
    /// The steps of `seq` (ascending timesteps of `schedule`).
    ///
    /// # Panics
    /// If a timestep is outside the schedule.
    pub fn new(schedule: &NoiseSchedule, seq: &[usize]) -> Self {
        let n = seq.len();
        let t: Vec<usize> = seq.iter().rev().copied().collect();
        let a_t = t.iter().map(|&t| schedule.alpha_bar(t as i64)).collect();
        let a_next = (0..n).map(|k| if k + 1 == n { 1.0 } else { schedule.alpha_bar(seq[n - 2 - k] as i64) }).collect();
        Self { t, a_t, a_next }
    }

    /// Number of steps `T`.
    pub fn len(&self) -> usize {
        self.t.len()
    }

    /// Whether there are no steps.
    pub fn is_empty(&self) -> bool {
        self.t.is_empty()
    }

    /// DDIM's noise scale of step `k`:
    /// `eta * sqrt((1 - a_t / a_n) (1 - a_n) / (1 - a_t))` (0 at the last step).
    pub fn sigma(&self, k: usize, eta: f64) -> f64 {
        let (at, an) = (self.a_t[k], self.a_next[k]);
        eta * ((1.0 - at / an) * (1.0 - an) / (1.0 - at)).max(0.0).sqrt()
    }

    /// The timesteps `t_k` as a `(B,)` float tensor (`t_k` for every image).
    pub fn t_tensor(&self, k: usize, batch: usize, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        Tensor::full(self.t[k] as f32, batch, dev)?.to_dtype(dtype)
    }
}

/// Pre-drawn noise of a stochastic sampler: `(T, B, C, H, W)`, step `k` uses `noise[k]`.
#[derive(Debug, Clone)]
pub struct StepNoise(pub Tensor);

impl StepNoise {
    /// Standard normal noise for `steps` steps of `shape = (B, C, H, W)` from `rng`.
    pub fn draw(rng: &mut DeqRng, steps: usize, shape: (usize, usize, usize, usize), dtype: DType, dev: &Device) -> Result<Self> {
        let (b, c, h, w) = shape;
        Ok(Self(rng.randn((steps, b, c, h, w), dtype, dev)?))
    }

    /// Step `k`'s noise `(B, C, H, W)`.
    pub fn step(&self, k: usize) -> candle_core::Result<Tensor> {
        self.0.get(k)
    }
}

/// The samplers of `deq-ddim sample`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SamplerKind {
    /// Sequential DDIM (`eta` from the options; 0: deterministic).
    Ddim,
    /// The DDIM trajectory as one fixed point, solved by a deq-core solver.
    Deq,
    /// DDPM ancestral sampling.
    Ddpm,
}

/// What one sampling run cost.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct SampleStats {
    /// Sequential rounds: model calls one after another (the sequential samplers: `T`; DEQ:
    /// its function evaluations).
    pub rounds: usize,
    /// Images passed through the model in total.
    pub model_evals: usize,
    /// Per round, the largest relative residual `||f(z) - z|| / ||f(z)||` over the trajectories
    /// (DEQ only).
    pub residual_trace: Vec<f64>,
    /// Final largest relative residual (DEQ only).
    pub residual: f64,
    /// Wall-clock seconds.
    pub seconds: f64,
}

#[cfg(test)]
pub(crate) mod tests;
