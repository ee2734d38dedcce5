//! Losses shared by the trainers that candle-nn lacks or computes unstably.

use candle_core::{Result, Tensor};

/// Mean binary cross-entropy of `logits` against `targets` in `[0, 1]` (same shape), computed
/// stably as `max(x, 0) - x t + log(1 + exp(-|x|))` (as `torch.nn.BCEWithLogitsLoss`;
/// candle-nn's version takes `log(sigmoid(x))` and overflows for large `|x|`). At `x = 0` the
/// kinks of `max` and `|.|` cancel (candle's rules use the same one-sided derivative for both),
/// so the gradient is the exact `sigmoid(x) - t` everywhere.
pub fn bce_with_logits(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let softplus = logits.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?;
    (logits.relu()? - (logits * targets)?)?.add(&softplus)?.mean_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn value_and_gradient_against_finite_differences() {
        let dev = Device::Cpu;
        let x = Var::new(&[[-40.0f64, -1.3, 0.0], [0.7, 2.5, 60.0]], &dev).unwrap();
        let t = Tensor::new(&[[0.0f64, 1.0, 1.0], [0.0, 1.0, 0.0]], &dev).unwrap();
        let loss = bce_with_logits(x.as_tensor(), &t).unwrap();
        let xs = [-40.0f64, -1.3, 0.0, 0.7, 2.5, 60.0];
        let ts = [0.0, 1.0, 1.0, 0.0, 1.0, 0.0];
        // Large |x| must not overflow: log(1 + exp(60)) = 60 + log(1 + exp(-60)).
        let stable = |v: &[f64; 6]| v.iter().zip(&ts).map(|(&x, &t)| x.max(0.0) - x * t + (1.0 + (-x.abs()).exp()).ln()).sum::<f64>() / 6.0;
        let by_hand = (40f64.exp().recip().ln_1p() + (1.0 + (-1.3f64).exp()).ln() + 1.3 + 2f64.ln() + 0.7 + (1.0 + (-0.7f64).exp()).ln() + (1.0 + (-2.5f64).exp()).ln() + 60.0) / 6.0;
        assert!((loss.to_scalar::<f64>().unwrap() - by_hand).abs() < 1e-12);
        assert!((stable(&xs) - by_hand).abs() < 1e-12);
        let g = loss.backward().unwrap().get(&x).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        for i in 0..6 {
            let h = 1e-6;
            let (mut a, mut b) = (xs, xs);
            a[i] += h;
            b[i] -= h;
            let fd = (stable(&a) - stable(&b)) / (2.0 * h);
            assert!((g[i] - fd).abs() < 1e-8, "entry {i}: {} vs {fd}", g[i]);
        }
    }
}
