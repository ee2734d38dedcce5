//! Differentiable layers that candle does not differentiate: candle_nn's `LayerNorm`,
//! `RmsNorm` and `softmax_last_dim` are fused ops without a backward pass, so a model built on
//! them trains its other parameters and silently leaves these gradients at zero. Here the
//! forward passes are fused CPU kernels (f32 and f64, statistics accumulated in f64) with
//! exact backward rules, and other devices and dtypes use candle's composed ops, which candle
//! differentiates. [`linear_map`] applies a shared weight to inputs of any rank as one
//! matrix product (candle's `broadcast_matmul` runs one small product per batch entry);
//! [`log_softmax_pick`] is the log-likelihood of one column per row (cross-entropy) without
//! the log-softmax matrix; [`relu`] and [`silu`] have one-pass backward kernels; [`plane_bias_add`] adds a per-channel
//! (or per-sample, per-channel) bias with a one-pass bias gradient; [`bmm`] runs batches of small
//! products with the batch over the threads; [`conv2d`] is a convolution with batched
//! unfold-and-multiply kernels for the forward pass and both gradients; [`group_norm`] is
//! fused (two passes forward, two backward), and so is [`batch_norm_train`] (batch statistics,
//! as `torch.nn.BatchNorm2d` in training).

mod batch_norm;
mod bmm;
mod conv2d;
mod float;
mod group_norm;
mod layer_norm;
mod linear;
mod log_softmax_pick;
mod plane_bias;
mod relu;
mod silu;
mod softmax;

pub use batch_norm::batch_norm_train;
pub use bmm::bmm;
pub use conv2d::{conv2d, conv2d_backward, conv2d_with, Conv2dSpec};
pub use float::KernelFloat;
pub use group_norm::{group_norm, GroupNorm};
pub use layer_norm::{layer_norm, LayerNorm};
pub use linear::linear_map;
pub use log_softmax_pick::log_softmax_pick;
pub use plane_bias::plane_bias_add;
pub use relu::relu;
pub use silu::silu;
pub use softmax::softmax_last_dim;
