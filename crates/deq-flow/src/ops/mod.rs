//! Operations specific to optical flow.
//!
//! | module | what it holds |
//! |---|---|
//! | [`lookup`] | the correlation lookup (custom op: CPU kernels, gradients to maps and coordinates) |
//! | [`lookup_features`] | the same lookup from features, without storing the volume |
//! | [`upsample`] | convex upsampling, `upflow8`, align-corners bilinear resizing |
//! | [`pool`] | 2x2 average pooling of the correlation maps |

pub mod lookup;
pub mod lookup_features;
pub mod pool;
pub mod upsample;
mod window;

pub use lookup::{lookup, lookup_composed};
pub use lookup_features::{channels_last, lookup_channels_last, lookup_features};
pub use pool::avg_pool2x2;
pub use upsample::{convex_upsample, upflow8};
