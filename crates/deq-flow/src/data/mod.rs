//! Training and evaluation data: dataset layouts, augmentation and the synthetic generator.
//!
//! | module | what it holds |
//! |---|---|
//! | [`datasets`] | FlyingChairs, FlyingThings3D, Sintel, KITTI, HD1K and folder layouts; pair loading |
//! | [`augment`] | RAFT's augmentations for dense and sparse ground truth |
//! | [`synth`] | FlyingChairs-like pairs generated from photographs, with exact flow |

pub mod augment;
pub mod datasets;
pub mod synth;
