//! The zoo's initialisation (`weights_init` of the zoo's `train.py`), applied to a built
//! model by variable name: every linear map, embedding, projection and the cluster weights
//! `N(0, std)` (the zoo's `init_std` and `proj_init_std`, both 0.01), biases zero, affine
//! LayerNorm weights `N(1, std)`; the relative-position biases `r_w`/`r_r` keep their
//! constructor draw `U(-0.05, 0.05)` (the zoo's rule for them never matches its class name).
//! Weight norm is applied after the draw, so `g` becomes the new rows' norms and the
//! effective weights are the drawn ones. deq-seq gets the same: the zoo registers weight norm
//! before drawing there, so its draw is discarded and PyTorch's defaults remain (spec defect
//! D2); we apply the rule the zoo intends.

use candle_core::{Result, Tensor, Var};
use deq_core::rng::DeqRng;

/// How a variable is initialised, from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitRule {
    /// `N(0, std)`: linear maps, embeddings, projections, cluster weights.
    Normal,
    /// `N(1, std)`: LayerNorm weights.
    NormalAroundOne,
    /// Zero: biases.
    Zero,
    /// The row norms of the raw weight it scales (weight norm's `g`).
    RowNorms,
    /// Left as built (`r_w_bias`, `r_r_bias`).
    Keep,
}

/// The rule for a variable of [`crate::model::DeqTransformerLm::named_vars`].
pub fn rule(name: &str) -> InitRule {
    let last = name.rsplit('.').next().unwrap_or(name);
    let in_ln = name.split('.').any(|p| p.starts_with("ln") && p[2..].chars().all(|c| c.is_ascii_digit()));
    match last {
        "r_w_bias" | "r_r_bias" => InitRule::Keep,
        "weight_g" => InitRule::RowNorms,
        "weight" if in_ln => InitRule::NormalAroundOne,
        _ if last == "bias" || last == "cluster_bias" || name.contains(".bias.") || name.starts_with("out.bias") => InitRule::Zero,
        _ => InitRule::Normal,
    }
}

/// Re-draws every variable of `vars` by [`rule`] with standard deviation `std` from `rng`;
/// `weight_norm` says whether `weight_g` variables are weight norm's scales (set to their
/// `weight_v`'s row norms) or other normalisations' (left alone). Call the layers' `reset`
/// afterwards so that normalised weights are recomputed.
pub fn zoo_init(vars: &[(String, Var)], std: f64, weight_norm: bool, rng: &mut DeqRng) -> Result<()> {
    for (name, v) in vars {
        let t = v.as_tensor();
        match rule(name) {
            InitRule::Normal => v.set(&rng.randn(t.shape(), t.dtype(), t.device())?.affine(std, 0.0)?)?,
            InitRule::NormalAroundOne => v.set(&rng.randn(t.shape(), t.dtype(), t.device())?.affine(std, 1.0)?)?,
            InitRule::Zero => v.set(&t.zeros_like()?)?,
            InitRule::RowNorms | InitRule::Keep => {}
        }
    }
    if weight_norm {
        for (name, g) in vars.iter().filter(|(n, _)| rule(n) == InitRule::RowNorms) {
            let raw = format!("{}weight_v", name.strip_suffix("weight_g").unwrap_or(name));
            let (_, w) = vars.iter().find(|(n, _)| *n == raw).ok_or_else(|| candle_core::Error::Msg(format!("{name} without {raw}")))?;
            let w = w.as_tensor();
            let rows = w.dim(0)?;
            let norms: Tensor = w.reshape((rows, ()))?.sqr()?.sum_keepdim(1)?.sqrt()?;
            g.set(&norms.reshape(g.shape())?)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_the_zoos_rules() {
        for (n, r) in [
            ("blocks.0.attn.qkv.weight_v", InitRule::Normal),
            ("blocks.1.ff.w1.weight_g", InitRule::RowNorms),
            ("blocks.0.ff.w2.bias", InitRule::Zero),
            ("blocks.0.attn.o.bias", InitRule::Zero),
            ("blocks.0.ln2.weight", InitRule::NormalAroundOne),
            ("blocks.0.ln1.bias", InitRule::Zero),
            ("blocks.0.attn.r_w_bias", InitRule::Keep),
            ("blocks.0.attn.r_r_bias", InitRule::Keep),
            ("emb.emb.0", InitRule::Normal),
            ("emb.proj.1", InitRule::Normal),
            ("out.bias.0", InitRule::Zero),
            ("out.proj.0", InitRule::Normal),
            ("out.cluster_weight", InitRule::Normal),
            ("out.cluster_bias", InitRule::Zero),
            ("injection.weight", InitRule::Normal),
            ("injection.bias", InitRule::Zero),
        ] {
            assert_eq!(rule(n), r, "{n}");
        }
    }
}
