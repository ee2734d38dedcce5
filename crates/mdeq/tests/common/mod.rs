//! The small MNIST run the integration tests share.

use mdeq::config::{RunConfig, MNIST_SMALL};

/// MDEQ with two 8-channel branches and 3 solver steps on 320 training and 100 test digits of
/// the committed MNIST: batch 32 (10 steps per epoch), 2 epochs, SGD 0.1.
pub fn tiny_config() -> RunConfig {
    let mut cfg = RunConfig::from_toml(MNIST_SMALL, "built-in").unwrap();
    cfg.model.channels = vec![8, 8];
    cfg.model.head_channels = vec![2, 4];
    cfg.model.final_chansize = 16;
    cfg.model.groups = 4;
    cfg.deq.f_max_iter = 3;
    cfg.deq.eval_f_max_iter = 3;
    cfg.train.batch_size = 32;
    cfg.train.eval_batch_size = 100;
    cfg.train.train_limit = 320;
    cfg.train.test_limit = 100;
    cfg.train.epochs = 2;
    cfg.train.lr = 0.1;
    cfg.data.dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../datasets/mnist").into();
    cfg
}
