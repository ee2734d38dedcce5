//! Adaptive input embedding and projected adaptive log-softmax (Baevski & Auli; Grave et al.;
//! Transformer-XL's projected variant), with tied weights: the vocabulary is split at
//! `cutoffs` into clusters; cluster `i` has embeddings of width `d_embed / div_val^i`
//! projected to the model width. The output layer scores a head (the first cluster's tokens
//! and one entry per tail cluster) for every position and a tail cluster's tokens only for the
//! positions whose target lies in it, so a `(tokens, vocabulary)` logit matrix is never built.
//!
//! Tying as the zoo: the output layer of cluster `i` uses cluster `i`'s embedding matrix, and
//! the tail clusters' output projections are their input projections. Unlike the zoo (which
//! shares storage between two parameters, so the optimiser updates it twice per step), each
//! tied matrix is one variable here.

use candle_core::{DType, Device, Result, Tensor, Var, D};
use deq_core::rng::DeqRng;

/// Sizes of the adaptive layers.
#[derive(Debug, Clone, PartialEq)]
pub struct AdaptiveConfig {
    /// Vocabulary size.
    pub n_token: usize,
    /// Width of the first cluster's embeddings.
    pub d_embed: usize,
    /// Model width.
    pub d_model: usize,
    /// Cluster boundaries (increasing, below `n_token`; empty: one cluster).
    pub cutoffs: Vec<usize>,
    /// Each cluster's embedding width is the previous one's divided by this.
    pub div_val: usize,
    /// Tie the first cluster's output projection to its input projection too (the zoo ties
    /// only the tail clusters').
    pub tie_first_projection: bool,
}

impl AdaptiveConfig {
    /// `[0, cutoffs..., n_token]`, checked.
    fn bounds(&self) -> Result<Vec<usize>> {
        let mut b = vec![0];
        b.extend(&self.cutoffs);
        b.push(self.n_token);
        if b.windows(2).any(|w| w[0] >= w[1]) || self.div_val == 0 || self.d_embed == 0 {
            candle_core::bail!("adaptive layers: cutoffs {:?} must increase below n_token {} (div_val {}, d_embed {})", self.cutoffs, self.n_token, self.div_val, self.d_embed);
        }
        Ok(b)
    }

    /// Embedding width of cluster `i`.
    fn width(&self, i: usize) -> usize {
        (self.d_embed / self.div_val.pow(i as u32)).max(1)
    }
}

/// The shared parameters: per cluster an embedding `(size_i, d_i)` and, when `d_i != d_model`
/// or `div_val > 1`, an input projection `(d_model, d_i)`.
#[derive(Debug, Clone)]
pub struct AdaptiveEmbedding {
    cfg: AdaptiveConfig,
    bounds: Vec<usize>,
    emb: Vec<Var>,
    proj: Vec<Option<Var>>,
}

/// The head/tail rows of each cluster: `(cluster, row indices, local targets)`.
type Groups = Vec<(usize, Vec<u32>, Vec<u32>)>;

fn group_by_cluster(bounds: &[usize], tokens: &[u32]) -> Result<Groups> {
    let n_clusters = bounds.len() - 1;
    let mut groups: Groups = (0..n_clusters).map(|i| (i, Vec::new(), Vec::new())).collect();
    for (row, &t) in tokens.iter().enumerate() {
        let t = t as usize;
        let i = bounds.partition_point(|&b| b <= t).saturating_sub(1);
        if t >= *bounds.last().expect("bounds") {
            candle_core::bail!("token id {t} is outside the vocabulary of {}", bounds.last().expect("bounds"));
        }
        groups[i].1.push(row as u32);
        groups[i].2.push((t - bounds[i]) as u32);
    }
    Ok(groups)
}

/// The inverse of the permutation that lists the groups' rows in order.
fn inverse_order(groups: &Groups, n: usize, dev: &Device) -> Result<Tensor> {
    let mut inv = vec![0u32; n];
    for (k, &row) in groups.iter().flat_map(|g| g.1.iter()).enumerate() {
        inv[row as usize] = k as u32;
    }
    Tensor::from_vec(inv, n, dev)
}

impl AdaptiveEmbedding {
    /// Parameters drawn as the zoo: embeddings `N(0, 0.01^2)`, projections `N(0, 0.01^2)`.
    pub fn new(cfg: &AdaptiveConfig, rng: &mut DeqRng, dtype: DType, dev: &Device) -> Result<Self> {
        let bounds = cfg.bounds()?;
        let mut emb = Vec::new();
        let mut proj = Vec::new();
        for i in 0..bounds.len() - 1 {
            let d = cfg.width(i);
            emb.push(Var::from_tensor(&rng.randn((bounds[i + 1] - bounds[i], d), dtype, dev)?.affine(0.01, 0.0)?)?);
            let needs = d != cfg.d_model || cfg.div_val > 1;
            proj.push(if needs { Some(Var::from_tensor(&rng.randn((cfg.d_model, d), dtype, dev)?.affine(0.01, 0.0)?)?) } else { None });
        }
        Ok(Self { cfg: cfg.clone(), bounds, emb, proj })
    }

    /// Trainable variables: `emb.{i}` and `proj.{i}`.
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        let mut v: Vec<(String, Var)> = self.emb.iter().enumerate().map(|(i, e)| (format!("emb.{i}"), e.clone())).collect();
        v.extend(self.proj.iter().enumerate().filter_map(|(i, p)| p.as_ref().map(|p| (format!("proj.{i}"), p.clone()))));
        v
    }

    /// `sqrt(d_model) * P_i E_i[t - l_i]` for each token of `tokens` (any shape, u32):
    /// `(tokens..., d_model)`.
    pub fn forward(&self, tokens: &Tensor) -> Result<Tensor> {
        let dev = tokens.device();
        let shape = tokens.dims().to_vec();
        let ids = tokens.flatten_all()?.to_dtype(DType::U32)?.to_vec1::<u32>()?;
        let groups = group_by_cluster(&self.bounds, &ids)?;
        let mut parts = Vec::new();
        for (i, rows, local) in &groups {
            if rows.is_empty() {
                continue;
            }
            let e = self.emb[*i].as_tensor().index_select(&Tensor::new(local.as_slice(), dev)?, 0)?;
            parts.push(match &self.proj[*i] {
                Some(p) => e.matmul(&p.as_tensor().t()?)?,
                None => e,
            });
        }
        let d = self.cfg.d_model;
        let mut out_shape = shape;
        out_shape.push(d);
        if parts.is_empty() {
            return Tensor::zeros(out_shape, self.emb[0].dtype(), dev);
        }
        let ordered = Tensor::cat(&parts, 0)?.index_select(&inverse_order(&groups, ids.len(), dev)?, 0)?;
        (ordered * (d as f64).sqrt())?.reshape(out_shape)
    }
}

/// The projected adaptive log-softmax, tied to an [`AdaptiveEmbedding`].
#[derive(Debug, Clone)]
pub struct AdaptiveLogSoftmax {
    emb: AdaptiveEmbedding,
    /// Output biases per cluster (zeros at initialisation).
    bias: Vec<Var>,
    /// Output projections not tied to the input ones (`(d_model, d_i)`).
    own_proj: Vec<Option<Var>>,
    /// The tail clusters' head entries: `(n_clusters - 1, d_0)` and `(n_clusters - 1,)`.
    cluster: Option<(Var, Var)>,
}

impl AdaptiveLogSoftmax {
    /// The output layer tied to `emb` (its embeddings, and its tail projections).
    pub fn new(emb: &AdaptiveEmbedding, rng: &mut DeqRng) -> Result<Self> {
        let (dtype, dev) = (emb.emb[0].dtype(), emb.emb[0].device().clone());
        let n = emb.bounds.len() - 1;
        let bias = (0..n).map(|i| Var::zeros(emb.bounds[i + 1] - emb.bounds[i], dtype, &dev)).collect::<Result<Vec<_>>>()?;
        let own_proj = (0..n)
            .map(|i| match (&emb.proj[i], i == 0 && !emb.cfg.tie_first_projection) {
                (Some(p), true) => Ok(Some(Var::from_tensor(&rng.randn(p.shape(), dtype, &dev)?.affine(0.01, 0.0)?)?)),
                _ => Ok(None),
            })
            .collect::<Result<Vec<_>>>()?;
        let cluster = if n > 1 { Some((Var::zeros((n - 1, emb.cfg.width(0)), dtype, &dev)?, Var::zeros(n - 1, dtype, &dev)?)) } else { None };
        Ok(Self { emb: emb.clone(), bias, own_proj, cluster })
    }

    /// The variables this layer adds to the embedding's: `bias.{i}`, `proj.{i}` (untied
    /// projections), `cluster_weight`, `cluster_bias`.
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        let mut v: Vec<(String, Var)> = self.bias.iter().enumerate().map(|(i, b)| (format!("bias.{i}"), b.clone())).collect();
        v.extend(self.own_proj.iter().enumerate().filter_map(|(i, p)| p.as_ref().map(|p| (format!("proj.{i}"), p.clone()))));
        if let Some((w, b)) = &self.cluster {
            v.push(("cluster_weight".into(), w.clone()));
            v.push(("cluster_bias".into(), b.clone()));
        }
        v
    }

    /// `h` projected into cluster `i`'s embedding space.
    fn project(&self, h: &Tensor, i: usize) -> Result<Tensor> {
        match (&self.own_proj[i], &self.emb.proj[i]) {
            (Some(p), _) | (None, Some(p)) => h.matmul(p.as_tensor()),
            (None, None) => Ok(h.clone()),
        }
    }

    fn logits(&self, h: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
        h.matmul(&w.t()?)?.broadcast_add(b)
    }

    /// The head's logits `(n, shortlist + tail clusters)` for `h` `(n, d_model)`.
    fn head_logits(&self, h: &Tensor) -> Result<Tensor> {
        let (mut hw, mut hb) = (self.emb.emb[0].as_tensor().clone(), self.bias[0].as_tensor().clone());
        if let Some((w, b)) = &self.cluster {
            hw = Tensor::cat(&[&hw, w.as_tensor()], 0)?;
            hb = Tensor::cat(&[&hb, b.as_tensor()], 0)?;
        }
        self.logits(&self.project(h, 0)?, &hw, &hb)
    }

    /// The head's log-probabilities `(n, shortlist + tail clusters)`.
    fn head_log_probs(&self, h: &Tensor) -> Result<Tensor> {
        candle_nn::ops::log_softmax(&self.head_logits(h)?, D::Minus1)
    }

    /// The full distribution: log-probabilities `(n, n_token)` for `h` `(n, d_model)` (for
    /// sampling a few positions; training uses [`AdaptiveLogSoftmax::nll`], which never forms
    /// this matrix).
    pub fn log_probs(&self, h: &Tensor) -> Result<Tensor> {
        let n_clusters = self.emb.bounds.len() - 1;
        let shortlist = self.emb.bounds[1];
        let head = self.head_log_probs(h)?;
        let mut parts = vec![head.narrow(1, 0, shortlist)?];
        for i in 1..n_clusters {
            let col = shortlist + n_clusters - 1 - i;
            let tail = candle_nn::ops::log_softmax(&self.logits(&self.project(h, i)?, self.emb.emb[i].as_tensor(), self.bias[i].as_tensor())?, D::Minus1)?;
            parts.push(tail.broadcast_add(&head.narrow(1, col, 1)?)?);
        }
        Tensor::cat(&parts, 1)
    }

    /// The negative log-likelihood of each target: `h` `(n, d_model)`, `targets` `(n,)` u32;
    /// returns `(n,)` in the targets' order.
    pub fn nll(&self, h: &Tensor, targets: &Tensor) -> Result<Tensor> {
        let dev = h.device();
        let ids = targets.to_dtype(DType::U32)?.to_vec1::<u32>()?;
        let n_clusters = self.emb.bounds.len() - 1;
        let shortlist = self.emb.bounds[1];
        let groups = group_by_cluster(&self.emb.bounds, &ids)?;
        // The head's column of each row: its target in the first cluster, else its cluster's
        // entry (the zoo's order: the first tail cluster takes the last column).
        let mut cols = vec![0u32; ids.len()];
        for (i, rows, local) in &groups {
            for (&r, &l) in rows.iter().zip(local) {
                cols[r as usize] = if *i == 0 { l } else { (shortlist + n_clusters - 1 - i) as u32 };
            }
        }
        let head = deq_core::nn::log_softmax_pick(&self.head_logits(h)?, &cols)?;
        if n_clusters == 1 {
            return head.neg();
        }
        // Tail clusters: the log-probability within the cluster, for its rows only.
        let mut parts = Vec::new();
        for (i, rows, local) in &groups {
            if *i == 0 {
                parts.push(Tensor::zeros(rows.len(), h.dtype(), dev)?);
            } else if !rows.is_empty() {
                let hi = self.project(&h.index_select(&Tensor::new(rows.as_slice(), dev)?, 0)?, *i)?;
                let tail = self.logits(&hi, self.emb.emb[*i].as_tensor(), self.bias[*i].as_tensor())?;
                parts.push(deq_core::nn::log_softmax_pick(&tail, local)?);
            }
        }
        let tails = Tensor::cat(&parts, 0)?.index_select(&inverse_order(&groups, ids.len(), dev)?, 0)?;
        (head + tails)?.neg()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::check_var_fd;

    fn cfg(cutoffs: Vec<usize>, div_val: usize) -> AdaptiveConfig {
        AdaptiveConfig { n_token: 23, d_embed: 8, d_model: 6, cutoffs, div_val, tie_first_projection: false }
    }

    fn layers(c: &AdaptiveConfig, seed: u64) -> (AdaptiveEmbedding, AdaptiveLogSoftmax) {
        let mut rng = DeqRng::new(seed);
        let e = AdaptiveEmbedding::new(c, &mut rng, DType::F64, &Device::Cpu).unwrap();
        let s = AdaptiveLogSoftmax::new(&e, &mut rng).unwrap();
        // Non-zero biases and cluster entries, so that every parameter matters.
        for (_, v) in s.named_vars() {
            v.set(&rng.randn(v.shape(), DType::F64, &Device::Cpu).unwrap().affine(0.3, 0.0).unwrap()).unwrap();
        }
        (e, s)
    }

    /// The model's distribution over the whole vocabulary, one `nll` call per token.
    fn probabilities(s: &AdaptiveLogSoftmax, h: &Tensor, n_token: usize) -> Vec<f64> {
        let n = h.dim(0).unwrap();
        (0..n_token)
            .map(|t| {
                let tg = Tensor::from_vec(vec![t as u32; n], n, &Device::Cpu).unwrap();
                s.nll(h, &tg).unwrap().neg().unwrap().exp().unwrap().to_vec1::<f64>().unwrap()[0]
            })
            .collect()
    }

    #[test]
    fn the_adaptive_distribution_sums_to_one_and_one_cluster_is_a_plain_softmax() {
        let h = DeqRng::new(1).randn((1, 6), DType::F64, &Device::Cpu).unwrap();
        for c in [cfg(vec![5, 12], 2), cfg(vec![5, 12], 1), cfg(vec![], 1)] {
            let (_, s) = layers(&c, 2);
            let p = probabilities(&s, &h, c.n_token);
            let total: f64 = p.iter().sum();
            assert!((total - 1.0).abs() < 1e-12, "{c:?}: {total}");
        }
        // One cluster: log_softmax(P^T h E^T + b) computed by hand.
        let c = AdaptiveConfig { d_embed: 6, ..cfg(vec![], 1) };
        let (e, s) = layers(&c, 3);
        assert!(e.proj[0].is_none());
        let logits = h.matmul(&e.emb[0].as_tensor().t().unwrap()).unwrap().broadcast_add(s.bias[0].as_tensor()).unwrap();
        let lp = candle_nn::ops::log_softmax(&logits, 1).unwrap().to_vec2::<f64>().unwrap();
        let p = probabilities(&s, &h, c.n_token);
        for t in 0..c.n_token {
            assert!((p[t].ln() - lp[0][t]).abs() < 1e-12);
        }
    }

    #[test]
    fn the_first_tail_cluster_reads_the_last_head_column() {
        let (e, s) = layers(&cfg(vec![5, 12], 2), 4);
        let h = DeqRng::new(5).randn((1, 6), DType::F64, &Device::Cpu).unwrap();
        // Head log-probabilities by hand; cluster 1 (tokens 5..12) uses column 5 + 2 - 1 = 6.
        let (w, b) = s.cluster.as_ref().unwrap();
        let hw = Tensor::cat(&[e.emb[0].as_tensor(), w.as_tensor()], 0).unwrap();
        let hb = Tensor::cat(&[s.bias[0].as_tensor(), b.as_tensor()], 0).unwrap();
        let head = candle_nn::ops::log_softmax(&s.logits(&s.project(&h, 0).unwrap(), &hw, &hb).unwrap(), 1).unwrap().to_vec2::<f64>().unwrap();
        let p = probabilities(&s, &h, 23);
        let (c1, c2) = (p[5..12].iter().sum::<f64>(), p[12..].iter().sum::<f64>());
        assert!((c1.ln() - head[0][6]).abs() < 1e-12 && (c2.ln() - head[0][5]).abs() < 1e-12, "{} {} {:?}", c1.ln(), c2.ln(), &head[0][5..]);
    }

    #[test]
    fn embeddings_are_scaled_projected_rows_and_out_of_vocabulary_ids_are_refused() {
        let (e, _) = layers(&cfg(vec![5, 12], 2), 6);
        let x = e.forward(&Tensor::new(&[[3u32, 7], [20, 3]], &Device::Cpu).unwrap()).unwrap();
        assert_eq!(x.dims(), &[2, 2, 6]);
        let by_hand = |i: usize, local: u32| {
            let row = e.emb[i].as_tensor().narrow(0, local as usize, 1).unwrap();
            (row.matmul(&e.proj[i].as_ref().unwrap().as_tensor().t().unwrap()).unwrap() * 6f64.sqrt()).unwrap().squeeze(0).unwrap().to_vec1::<f64>().unwrap()
        };
        let x = x.to_vec3::<f64>().unwrap();
        assert_eq!(x[0][0], by_hand(0, 3));
        assert_eq!(x[0][1], by_hand(1, 2));
        assert_eq!(x[1][0], by_hand(2, 8));
        assert_eq!(x[1][1], x[0][0]);
        assert!(e.forward(&Tensor::new(&[23u32], &Device::Cpu).unwrap()).unwrap_err().to_string().contains("outside the vocabulary"));
        assert!(AdaptiveEmbedding::new(&cfg(vec![12, 5], 2), &mut DeqRng::new(0), DType::F64, &Device::Cpu).is_err());
        assert!(AdaptiveEmbedding::new(&cfg(vec![5, 12], 0), &mut DeqRng::new(0), DType::F64, &Device::Cpu).is_err());
        assert!(AdaptiveEmbedding::new(&AdaptiveConfig { d_embed: 0, ..cfg(vec![5, 12], 2) }, &mut DeqRng::new(0), DType::F64, &Device::Cpu).is_err());
        // Cluster widths d_embed / div_val^i: 8, 4, 2.
        assert_eq!(e.emb.iter().map(|v| v.dims()[1]).collect::<Vec<_>>(), [8, 4, 2]);
        assert_eq!(e.emb.iter().map(|v| v.dims()[0]).collect::<Vec<_>>(), [5, 7, 11]);
    }

    /// Central differences in f64 of `mean(nll(h(x), t))` where `h` uses the embedding of the
    /// inputs too (as a language model's tied layers do), against every parameter's gradient:
    /// the tied matrices receive the sum of both uses.
    #[test]
    fn the_full_distribution_sums_to_one_and_agrees_with_the_nll() {
        for (cutoffs, div) in [(vec![5, 12], 2), (vec![], 1)] {
            let c = cfg(cutoffs, div);
            let (_, s) = layers(&c, 3);
            let h = DeqRng::new(2).randn((4, 6), DType::F64, &Device::Cpu).unwrap();
            let lp = s.log_probs(&h).unwrap();
            assert_eq!(lp.dims(), &[4, 23]);
            let sums: Vec<f64> = lp.exp().unwrap().sum(1).unwrap().to_vec1().unwrap();
            assert!(sums.iter().all(|v| (v - 1.0).abs() < 1e-12), "{sums:?}");
            for t in 0..23u32 {
                let targets = Tensor::new(&[t; 4], &Device::Cpu).unwrap();
                let nll: Vec<f64> = s.nll(&h, &targets).unwrap().to_vec1().unwrap();
                let col: Vec<f64> = lp.narrow(1, t as usize, 1).unwrap().squeeze(1).unwrap().to_vec1().unwrap();
                for (a, b) in nll.iter().zip(&col) {
                    assert!((a + b).abs() < 1e-12, "token {t}: nll {a} against log p {b}");
                }
            }
        }
    }

    #[test]
    fn gradients_match_finite_differences_with_tied_weights() {
        let c = cfg(vec![5, 12], 2);
        let (e, s) = layers(&c, 7);
        let inputs = Tensor::new(&[1u32, 6, 13, 22, 4], &Device::Cpu).unwrap();
        let targets = Tensor::new(&[6u32, 0, 19, 12, 4], &Device::Cpu).unwrap();
        let mix = DeqRng::new(8).randn((6, 6), DType::F64, &Device::Cpu).unwrap();
        let loss = || -> Tensor {
            let h = e.forward(&inputs).unwrap().matmul(&mix).unwrap().tanh().unwrap();
            s.nll(&h, &targets).unwrap().mean_all().unwrap()
        };
        let g = loss().backward().unwrap();
        let mut vars = e.named_vars();
        vars.extend(s.named_vars());
        assert_eq!(vars.len(), 3 + 3 + 3 + 1 + 2, "emb, tied tail projections + input proj 0, biases, untied proj 0, cluster");
        for (name, var) in vars {
            let gv = g.get(var.as_tensor()).unwrap_or_else(|| panic!("no gradient for {name}")).clone();
            check_var_fd(&name, &var, &gv, 1e-6, 1e-8, 3, &|| loss().to_scalar::<f64>().unwrap(), &|| ());
        }
    }
}
