//! Sampling text: the prompt is read in segments of `tgt_len` with the memory carried, then
//! each sampled token is a one-token segment whose fixed point joins the memory (at most the
//! model's `mem_len` positions), so generation costs one solve per token over a bounded key
//! range.

use crate::model::{DeqTransformerLm, Memory};
use candle_core::{DType, Device, Tensor};
use deq_core::rng::DeqRng;

/// Draws one index from log-probabilities `logp` at `temperature` (0: the most likely)
/// among the `top_k` most likely (0: all).
pub fn pick(logp: &[f32], temperature: f64, top_k: usize, rng: &mut DeqRng) -> usize {
    let mut order: Vec<usize> = (0..logp.len()).collect();
    order.sort_by(|&a, &b| logp[b].total_cmp(&logp[a]).then(a.cmp(&b)));
    if temperature == 0.0 || order.len() == 1 {
        return order[0];
    }
    if top_k > 0 {
        order.truncate(top_k);
    }
    let top = logp[order[0]] as f64;
    let w: Vec<f64> = order.iter().map(|&i| ((logp[i] as f64 - top) / temperature).exp()).collect();
    let mut u = rng.uniform() * w.iter().sum::<f64>();
    for (i, wi) in order.iter().zip(&w) {
        if u < *wi {
            return *i;
        }
        u -= wi;
    }
    *order.last().expect("a token")
}

/// `n` tokens sampled after `prompt` (non-empty).
#[allow(clippy::too_many_arguments)]
pub fn sample(model: &DeqTransformerLm, prompt: &[u32], n: usize, temperature: f64, top_k: usize, rng: &mut DeqRng, tgt_len: usize, dev: &Device) -> crate::Result<Vec<u32>> {
    if prompt.is_empty() {
        return Err(candle_core::Error::Msg("an empty prompt (give at least <eos>)".into()).into());
    }
    let mut mem: Memory = model.empty_memory(1)?;
    let mut hidden = None;
    for chunk in prompt.chunks(tgt_len.max(1)) {
        let x = Tensor::new(chunk, dev)?.unsqueeze(0)?;
        let out = model.forward(&x, &mem, false)?;
        mem = out.memory;
        hidden = out.hidden.last().cloned();
    }
    let mut out_ids = Vec::with_capacity(n);
    for _ in 0..n {
        let h = hidden.as_ref().expect("the prompt was read");
        let logp: Vec<f32> = model.next_token_log_probs(h)?.to_dtype(DType::F32)?.squeeze(0)?.to_vec1()?;
        let t = pick(&logp, temperature, top_k, rng) as u32;
        out_ids.push(t);
        let out = model.forward(&Tensor::new(&[t], dev)?.unsqueeze(0)?, &mem, false)?;
        mem = out.memory;
        hidden = out.hidden.last().cloned();
    }
    Ok(out_ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picking_follows_temperature_and_top_k() {
        let logp: Vec<f32> = [0.5f32, 0.3, 0.15, 0.05].iter().map(|p| p.ln()).collect();
        let mut rng = DeqRng::new(1);
        assert_eq!(pick(&logp, 0.0, 0, &mut rng), 0);
        let mut counts = [0usize; 4];
        for _ in 0..20_000 {
            counts[pick(&logp, 1.0, 0, &mut rng)] += 1;
        }
        for (c, p) in counts.iter().zip([0.5, 0.3, 0.15, 0.05]) {
            assert!((*c as f64 / 20_000.0 - p).abs() < 0.015, "{counts:?}");
        }
        let mut counts = [0usize; 4];
        for _ in 0..20_000 {
            counts[pick(&logp, 1.0, 2, &mut rng)] += 1;
        }
        assert_eq!(counts[2] + counts[3], 0);
        assert!((counts[0] as f64 / 20_000.0 - 0.625).abs() < 0.015, "{counts:?}");
        // A low temperature sharpens towards the most likely token.
        let cold = (0..2000).filter(|_| pick(&logp, 0.1, 0, &mut rng) == 0).count();
        assert!(cold > 1950, "{cold}");
    }
}
