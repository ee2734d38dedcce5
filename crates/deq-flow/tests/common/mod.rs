//! Helpers shared by the integration tests: temporary folders, texture images, a tiny
//! configuration, trained parameters.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use candle_core::Device;
use deq_flow::config::{RunConfig, SYNTHETIC_TINY};
use deq_flow::train::load_trained;

pub fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("deq-flow-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Two small textures written as PNGs.
pub fn textures(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for (i, f) in [0.11f32, 0.23].iter().enumerate() {
        image::RgbImage::from_fn(48, 40, |x, y| image::Rgb([((x as f32 * f).sin() * 100.0 + 128.0) as u8, ((y as f32 * f * 1.3).cos() * 90.0 + 128.0) as u8, ((x + y) as f32 * f * 0.7).sin().mul_add(60.0, 128.0) as u8])).save(dir.join(format!("t{i}.png"))).unwrap();
    }
}

/// A tiny, fast configuration on generated 48x64 pairs.
pub fn tiny(images: &Path) -> RunConfig {
    let mut cfg = RunConfig::from_toml(SYNTHETIC_TINY, "synthetic-tiny").unwrap();
    cfg.model.encoder_dims = [8, 8, 8];
    cfg.model.feature_dim = 8;
    cfg.model.hidden_dim = 6;
    cfg.model.context_dim = 4;
    cfg.model.corr_levels = 2;
    cfg.model.corr_radius = 2;
    cfg.model.motion_dims = [8, 6, 6, 4];
    cfg.model.motion_out = 6;
    cfg.model.head_dim = 6;
    cfg.model.mask_dim = 8;
    cfg.deq.f_max_iter = 4;
    cfg.deq.n_states = 2;
    cfg.data.images = vec![images.to_path_buf()];
    cfg.data.synthetic.height = 56;
    cfg.data.synthetic.width = 72;
    cfg.data.synthetic.max_motion = 8.0;
    cfg.data.augment.crop = [48, 64];
    cfg.data.pairs_per_epoch = 6;
    cfg.train.batch_size = 2;
    cfg.train.steps = 5;
    cfg.train.dtype = "f64".into();
    cfg.train.log_every = 1;
    cfg.train.eval_every = 0;
    cfg.train.checkpoint_every = 0;
    cfg.eval.datasets = vec![];
    cfg.validate().unwrap();
    cfg
}

pub fn params(cfg: &RunConfig, dir: &Path) -> Vec<Vec<f64>> {
    let model = load_trained(cfg, dir, &Device::Cpu).unwrap();
    model.named_vars().iter().map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1::<f64>().unwrap()).collect()
}

