//! Weight and spectral normalisation of the layers inside `f`, as reparameterised Linear and
//! Conv2d layers. The normalised weight is computed when the layer is built and recomputed by
//! `reset` once per training step (TorchDEQ's `reset_norm`).

mod layers;
mod normed_weight;

pub use layers::{NormConv2d, NormLinear};
pub use normed_weight::{NormOptions, NormedWeight};
