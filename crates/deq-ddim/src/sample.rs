//! One entry point for every sampler: a [`SampleRequest`] (sampler, steps, eta, solver) applied
//! to a batch of latents, with the stochastic samplers' noise drawn from a seed.

use candle_core::Tensor;
use deq_core::rng::DeqRng;

use crate::config::RunConfig;
use crate::error::Result;
use crate::sampler::sequential::{ddim, ddpm};
use crate::sampler::trajectory::{deq_observed, DeqSampleConfig, RoundObserver};
use crate::sampler::{Chunked, NoiseModel, SampleStats, SamplerKind, StepNoise, Steps};
use crate::schedule::{timesteps, NoiseSchedule, SkipType};

/// What to sample with.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleRequest {
    /// The sampler.
    pub sampler: SamplerKind,
    /// Steps `T`.
    pub steps: usize,
    /// Their spacing.
    pub skip: SkipType,
    /// DDIM's eta (ddim and deq).
    pub eta: f64,
    /// DEQ's solver.
    pub deq: DeqSampleConfig,
}

impl SampleRequest {
    /// The `[sample]` settings of `cfg` with `sampler`.
    pub fn from_config(cfg: &RunConfig, sampler: SamplerKind) -> Self {
        let s = &cfg.sample;
        Self { sampler, steps: s.steps, skip: s.skip, eta: s.eta, deq: s.deq.clone() }
    }
}

/// Images and what they cost.
#[derive(Debug, Clone)]
pub struct SampleOutput {
    /// `(B, C, H, W)` in (about) `[-1, 1]`.
    pub images: Tensor,
    /// Rounds, model evaluations, residuals, seconds.
    pub stats: SampleStats,
}

/// Samples from the latents `x_t` (`(B, C, H, W)`, standard normal); the noise of stochastic
/// samplers comes from `seed`, so DDIM and DEQ with the same seed and eta draw the same noise.
pub fn sample_batch(model: &dyn NoiseModel, schedule: &NoiseSchedule, req: &SampleRequest, x_t: &Tensor, seed: u64) -> Result<SampleOutput> {
    sample_batch_observed(model, schedule, req, x_t, seed, &mut |_| Ok(()))
}

/// [`sample_batch`], with `on_round` called with the images of every DEQ round (the sequential
/// samplers do not call it).
pub fn sample_batch_observed(model: &dyn NoiseModel, schedule: &NoiseSchedule, req: &SampleRequest, x_t: &Tensor, seed: u64, on_round: &mut RoundObserver<'_>) -> Result<SampleOutput> {
    let seq = timesteps(schedule.len(), req.steps, req.skip)?;
    let steps = Steps::new(schedule, &seq);
    let stochastic = req.sampler == SamplerKind::Ddpm || req.eta > 0.0;
    let noise = if stochastic { Some(StepNoise::draw(&mut DeqRng::new(seed ^ 0x0015_E5EE_D000), steps.len(), x_t.dims4()?, x_t.dtype(), x_t.device())?) } else { None };
    let chunked = Chunked { model, max_batch: req.deq.max_batch };
    let (images, stats) = match req.sampler {
        SamplerKind::Ddim => ddim(&chunked, &steps, x_t, req.eta, noise.as_ref())?,
        SamplerKind::Ddpm => ddpm(&chunked, &steps, x_t, noise.as_ref().expect("drawn"))?,
        SamplerKind::Deq => {
            let s = deq_observed(model, &steps, x_t, req.eta, noise.as_ref(), &req.deq, None, on_round)?;
            (s.images, s.stats)
        }
    };
    Ok(SampleOutput { images, stats })
}
