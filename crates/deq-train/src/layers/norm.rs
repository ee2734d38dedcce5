//! Normalisation layers: group norm (usable inside `f`) and batch norm (outside `f` only: batch
//! statistics inside `f` would make the fixed point depend on the batch).

use candle_core::{DType, Device, Result, Tensor, Var};
use std::sync::Mutex;

/// The optional per-channel scale and shift that follows a normalisation
/// (`weight` initialised to 1, `bias` to 0).
#[derive(Debug)]
struct ChannelAffine(Option<(Var, Var)>);

impl ChannelAffine {
    fn new(affine: bool, channels: usize, dtype: DType, dev: &Device) -> Result<Self> {
        Ok(Self(if affine { Some((Var::ones(channels, dtype, dev)?, Var::zeros(channels, dtype, dev)?)) } else { None }))
    }

    /// `y * weight + bias` with both broadcast over `(B, C, H, W)`.
    fn apply(&self, y: Tensor, c: usize) -> Result<Tensor> {
        match &self.0 {
            Some((w, b)) => y.broadcast_mul(&w.as_tensor().reshape((1, c, 1, 1))?)?.broadcast_add(&b.as_tensor().reshape((1, c, 1, 1))?),
            None => Ok(y),
        }
    }

    fn vars(&self, prefix: &str, out: &mut Vec<(String, Var)>) {
        if let Some((w, b)) = &self.0 {
            out.push((format!("{prefix}.weight"), w.clone()));
            out.push((format!("{prefix}.bias"), b.clone()));
        }
    }
}

/// Group normalisation over `(B, C, H, W)` with a per-channel affine transform
/// (`torch.nn.GroupNorm`, eps 1e-5): deq-core's [`deq_core::nn::GroupNorm`] (fused kernels;
/// candle_nn's layer-norm family has no gradient on contiguous inputs) with the trainers'
/// `forward` / `vars(prefix, out)` interface.
#[derive(Debug)]
pub struct GroupNorm(deq_core::nn::GroupNorm);

impl GroupNorm {
    /// `groups` must divide `channels`; `affine` adds the learnable scale and shift.
    pub fn new(groups: usize, channels: usize, affine: bool, dtype: DType, dev: &Device) -> Result<Self> {
        Self::with_eps(groups, channels, affine, 1e-5, dtype, dev)
    }

    /// [`GroupNorm::new`] with another epsilon (the DDPM UNet's 1e-6).
    pub fn with_eps(groups: usize, channels: usize, affine: bool, eps: f64, dtype: DType, dev: &Device) -> Result<Self> {
        Ok(Self(deq_core::nn::GroupNorm::new(groups, channels, affine, eps, dtype, dev)?))
    }

    /// Normalises `x` (`(B, C, H, W)`).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        candle_core::Module::forward(&self.0, x)
    }

    /// Trainable variables (`weight`, `bias` when affine).
    pub fn vars(&self, prefix: &str, out: &mut Vec<(String, Var)>) {
        out.extend(self.0.named_vars().into_iter().map(|(k, v)| (format!("{prefix}.{k}"), v)));
    }
}

/// Batch normalisation over `(B, C, H, W)` (`torch.nn.BatchNorm2d`, momentum 0.1): batch
/// statistics in training (running averages updated), running statistics in evaluation. In a
/// data-parallel job (a [`crate::dist::with_group`] of several ranks) the training
/// statistics are those of the global batch (`torch.nn.SyncBatchNorm`); every rank has equal
/// per-rank batch sizes.
#[derive(Debug)]
pub struct BatchNorm2d {
    affine: ChannelAffine,
    running: Mutex<(Tensor, Tensor)>,
    momentum: f64,
    eps: f64,
}

impl BatchNorm2d {
    /// A new layer with zero mean and unit variance, and (when `affine`) unit scale and zero shift.
    pub fn new(channels: usize, affine: bool, dtype: DType, dev: &Device) -> Result<Self> {
        Ok(Self {
            affine: ChannelAffine::new(affine, channels, dtype, dev)?,
            running: Mutex::new((Tensor::zeros(channels, dtype, dev)?, Tensor::ones(channels, dtype, dev)?)),
            momentum: 0.1,
            eps: 1e-5,
        })
    }

    /// Normalises `x`; `train` selects batch statistics (and updates the running ones).
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        if train && crate::dist::current_group().is_none() {
            // One process: deq-core's fused kernels (statistics, normalisation and affine in one
            // op, one fused backward).
            let (wt, bt) = match &self.affine.0 {
                Some((wv, bv)) => (Some(wv.as_tensor()), Some(bv.as_tensor())),
                None => (None, None),
            };
            let (y, mean, var) = deq_core::nn::batch_norm_train(x, wt, bt, self.eps)?;
            self.update_running(&mean, &var, (b * h * w) as f64)?;
            return Ok(y);
        }
        let (mean, var) = if train {
            let xt = x.transpose(0, 1)?.reshape((c, b * h * w))?;
            // Synchronised over the ranks of a data-parallel job (the statistics of the global
            // batch, as a single process would compute them); two passes, as without ranks.
            let (mean, var, n) = match crate::dist::current_group() {
                None => {
                    let mean = xt.mean_keepdim(1)?;
                    (mean.clone(), xt.broadcast_sub(&mean)?.sqr()?.mean_keepdim(1)?, (b * h * w) as f64)
                }
                Some(group) => {
                    let n = (b * h * w * group.context().world_size) as f64;
                    let sum = crate::dist::all_reduce_sum_differentiable(&group, &xt.sum_keepdim(1)?)?;
                    let mean = sum.affine(1.0 / n, 0.0)?;
                    let sq = crate::dist::all_reduce_sum_differentiable(&group, &xt.broadcast_sub(&mean)?.sqr()?.sum_keepdim(1)?)?;
                    (mean, sq.affine(1.0 / n, 0.0)?, n)
                }
            };
            self.update_running(&mean.detach().flatten_all()?, &var.detach().flatten_all()?, n)?;
            (mean.reshape((1, c, 1, 1))?, var.reshape((1, c, 1, 1))?)
        } else {
            let run = self.running.lock().expect("batch norm stats poisoned");
            (run.0.reshape((1, c, 1, 1))?, run.1.reshape((1, c, 1, 1))?)
        };
        let y = x.broadcast_sub(&mean)?.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        self.affine.apply(y, c)
    }

    /// Moves the running statistics towards a batch's `mean` and biased `var` (`(C,)`, over `n`
    /// values per channel; the running variance is the unbiased one, as PyTorch's).
    fn update_running(&self, mean: &Tensor, var: &Tensor, n: f64) -> Result<()> {
        let mut run = self.running.lock().expect("batch norm stats poisoned");
        let unbiased = var.affine(n / (n - 1.0).max(1.0), 0.0)?;
        run.0 = (run.0.affine(1.0 - self.momentum, 0.0)? + mean.affine(self.momentum, 0.0)?)?;
        run.1 = (run.1.affine(1.0 - self.momentum, 0.0)? + unbiased.affine(self.momentum, 0.0)?)?;
        Ok(())
    }

    /// Trainable variables (`weight`, `bias` when affine).
    pub fn vars(&self, prefix: &str, out: &mut Vec<(String, Var)>) {
        self.affine.vars(prefix, out);
    }

    /// Running statistics (`running_mean`, `running_var`), for checkpoints.
    pub fn buffers(&self, prefix: &str, out: &mut Vec<(String, Tensor)>) {
        let run = self.running.lock().expect("batch norm stats poisoned");
        out.push((format!("{prefix}.running_mean"), run.0.clone()));
        out.push((format!("{prefix}.running_var"), run.1.clone()));
    }

    /// Restores the running statistics (`mean`, `var`).
    pub fn load_buffers(&self, mean: Tensor, var: Tensor) -> Result<()> {
        let mut run = self.running.lock().expect("batch norm stats poisoned");
        if mean.shape() != run.0.shape() || var.shape() != run.1.shape() {
            candle_core::bail!("batch norm buffers: shape mismatch");
        }
        *run = (mean, var);
        Ok(())
    }
}
