//! Sequential samplers: DDIM (`generalized_steps` of the DDIM code) and DDPM ancestral
//! sampling (`ddpm_steps`), one model call per step.

use std::time::Instant;

use candle_core::Tensor;

use super::{NoiseModel, SampleStats, StepNoise, Steps};
use crate::error::{DdimError, Result};

fn check_noise(noise: Option<&StepNoise>, steps: &Steps, x_t: &Tensor, what: &str) -> Result<()> {
    if let Some(n) = noise {
        let want: Vec<usize> = std::iter::once(steps.len()).chain(x_t.dims().iter().copied()).collect();
        if n.0.dims() != want.as_slice() {
            return Err(DdimError::config(what, format!("noise of shape {:?}, expected {want:?}", n.0.dims())));
        }
    }
    Ok(())
}

/// DDIM from `x_t` (the images at the first step's timestep, `(B, C, H, W)`):
/// `x_n = sqrt(a_n) x0 + sigma z + sqrt(1 - a_n - sigma^2) eps` with
/// `x0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)` (not clipped) and
/// `sigma = eta sqrt((1 - a_t/a_n)(1 - a_n)/(1 - a_t))`. `noise` is required when `eta > 0`.
/// Returns the final images and the statistics.
///
/// No autograd graph survives a step (each step's output is detached), so memory stays at one
/// model call however many steps run; [`ddim_differentiable`] keeps the whole chain.
pub fn ddim(model: &dyn NoiseModel, steps: &Steps, x_t: &Tensor, eta: f64, noise: Option<&StepNoise>) -> Result<(Tensor, SampleStats)> {
    ddim_walk(model, steps, x_t, eta, noise, true, |_, _| Ok(()))
}

/// [`ddim`] with the autograd graph of every step kept: the output is differentiable in `x_t`
/// (and the model's weights) through all `T` model calls, whose activations stay in memory
/// (inversion by backpropagation through the chain).
pub fn ddim_differentiable(model: &dyn NoiseModel, steps: &Steps, x_t: &Tensor, eta: f64, noise: Option<&StepNoise>) -> Result<(Tensor, SampleStats)> {
    ddim_walk(model, steps, x_t, eta, noise, false, |_, _| Ok(()))
}

/// [`ddim`] keeping every step's output: the trajectory `(B, T, C, H, W)` (the DEQ sampler's
/// fixed point; a warm start for it).
pub fn ddim_trajectory(model: &dyn NoiseModel, steps: &Steps, x_t: &Tensor, eta: f64, noise: Option<&StepNoise>) -> Result<(Tensor, SampleStats)> {
    let mut outs = Vec::with_capacity(steps.len());
    let (_, stats) = ddim_walk(model, steps, x_t, eta, noise, true, |_, x| {
        outs.push(x.clone());
        Ok(())
    })?;
    Ok((Tensor::stack(&outs, 1)?, stats))
}

fn ddim_walk(model: &dyn NoiseModel, steps: &Steps, x_t: &Tensor, eta: f64, noise: Option<&StepNoise>, detach: bool, mut visit: impl FnMut(usize, &Tensor) -> Result<()>) -> Result<(Tensor, SampleStats)> {
    super::check_eta(eta)?;
    if eta > 0.0 && noise.is_none() {
        return Err(DdimError::config("sample.eta", format!("eta = {eta} needs pre-drawn noise")));
    }
    check_noise(noise, steps, x_t, "sample.eta")?;
    let start = Instant::now();
    let b = x_t.dim(0)?;
    let mut x = x_t.clone();
    for k in 0..steps.len() {
        let (at, an) = (steps.a_t[k], steps.a_next[k]);
        let e = model.predict(&x, &steps.t_tensor(k, b, x.dtype(), x.device())?)?;
        let sigma = steps.sigma(k, eta);
        let c2 = (1.0 - an - sigma * sigma).max(0.0).sqrt();
        // sqrt(a_n) x0 + c2 e = sqrt(a_n / a_t) x + (c2 - sqrt(a_n (1 - a_t) / a_t)) e.
        let mut next = (x.affine((an / at).sqrt(), 0.0)? + e.affine(c2 - (an * (1.0 - at) / at).sqrt(), 0.0)?)?;
        if sigma > 0.0 {
            let z = noise.expect("checked").step(k)?;
            next = (next + z.affine(sigma, 0.0)?)?;
        }
        x = if detach { next.detach() } else { next };
        visit(k, &x)?;
    }
    let stats = SampleStats { rounds: steps.len(), model_evals: steps.len() * b, seconds: start.elapsed().as_secs_f64(), ..Default::default() };
    Ok((x, stats))
}

/// DDPM ancestral sampling over the same steps: `x0` from the noise prediction clipped to
/// `[-1, 1]`, the posterior mean
/// `(sqrt(a_n) beta x0 + sqrt(1 - beta) (1 - a_n) x) / (1 - a_t)` with `beta = 1 - a_t / a_n`,
/// plus `sqrt(beta) z` except at timestep 0.
pub fn ddpm(model: &dyn NoiseModel, steps: &Steps, x_t: &Tensor, noise: &StepNoise) -> Result<(Tensor, SampleStats)> {
    check_noise(Some(noise), steps, x_t, "sample.sampler")?;
    let start = Instant::now();
    let b = x_t.dim(0)?;
    let mut x = x_t.clone();
    for k in 0..steps.len() {
        let (at, an) = (steps.a_t[k], steps.a_next[k]);
        let e = model.predict(&x, &steps.t_tensor(k, b, x.dtype(), x.device())?)?;
        let beta = 1.0 - at / an;
        let x0 = (x.affine((1.0 / at).sqrt(), 0.0)? - e.affine((1.0 / at - 1.0).sqrt(), 0.0)?)?.clamp(-1.0, 1.0)?;
        let mean = (x0.affine(an.sqrt() * beta / (1.0 - at), 0.0)? + x.affine((1.0 - beta).sqrt() * (1.0 - an) / (1.0 - at), 0.0)?)?;
        x = if steps.t[k] == 0 { mean } else { (mean + noise.step(k)?.affine(beta.sqrt(), 0.0)?)? }.detach();
    }
    let stats = SampleStats { rounds: steps.len(), model_evals: steps.len() * b, seconds: start.elapsed().as_secs_f64(), ..Default::default() };
    Ok((x, stats))
}

/// The deterministic DDIM encoding of clean images `x0` (`(B, C, H, W)` in `[-1, 1]`) up the
/// ascending `seq`: `x_j / sqrt(a_j) = x_i / sqrt(a_i) + (sqrt(1/a_j - 1) - sqrt(1/a_i - 1))
/// eps(x_i, i)` from `x_{seq[0]} = x0` to `seq[T-1]`: the DEQ-DDIM inversion's initial latent
/// (`forward_steps` of the DEQ-DDIM code).
pub fn ddim_encode(model: &dyn NoiseModel, schedule: &crate::schedule::NoiseSchedule, seq: &[usize], x0: &Tensor) -> Result<Tensor> {
    let b = x0.dim(0)?;
    let mut x = x0.clone();
    for w in seq.windows(2) {
        let (ai, aj) = (schedule.alpha_bar(w[0] as i64), schedule.alpha_bar(w[1] as i64));
        let t = Tensor::full(w[0] as f32, b, x.device())?.to_dtype(x.dtype())?;
        let e = model.predict(&x, &t)?;
        let coef = (1.0 / aj - 1.0).sqrt() - (1.0 / ai - 1.0).sqrt();
        x = (x.affine((aj / ai).sqrt(), 0.0)? + e.affine(aj.sqrt() * coef, 0.0)?)?.detach();
    }
    Ok(x)
}
