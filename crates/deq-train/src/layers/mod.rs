//! Layers that several model crates share and that need more than deq-core offers (running
//! statistics, data-parallel synchronisation), built on deq-core's kernels.
//!
//! | module | what it holds |
//! |---|---|
//! | [`conv`] | plain convolutions with their initialisations (N(0, s^2), PyTorch's default, Kaiming fan-out) |
//! | [`linear`] | fully connected layers with PyTorch's default initialisation |
//! | [`norm`] | group norm and batch norm (running statistics, SyncBatchNorm in data-parallel jobs) |

pub mod conv;
pub mod linear;
pub mod norm;

pub use conv::{norm_conv_vars, Conv, ConvInit};
pub use linear::Linear;
pub use norm::{BatchNorm2d, GroupNorm};
