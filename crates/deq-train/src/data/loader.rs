//! A shuffling, sharded batching loader that prepares batches on a background thread.
//!
//! Everything random is a pure function of `(seed, epoch, sample index)`: the epoch's
//! permutation is drawn from a generator seeded by `(seed, epoch)`, and each sample's
//! augmentation gets its own generator seeded by `(seed, epoch, index)`. Batches therefore do
//! not depend on thread timing, and the same seed gives the same batches.

use std::fmt;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use candle_core::{Device, Tensor};
use deq_core::rng::DeqRng;
use rayon::prelude::*;

use crate::data::augment::{normalize, to_f32};
use crate::data::dataset::ImageDataset;
use crate::error::{Result, TrainError};

/// A per-sample transform: `(bytes CHW, c, h, w, rng) -> f32 values`. The output must hold
/// the number of values given to [`Loader::with_augment`].
pub type AugmentFn = Arc<dyn Fn(&[u8], usize, usize, usize, &mut DeqRng) -> Vec<f32> + Send + Sync>;

/// Which part of each epoch this process sees, like torch's `DistributedSampler`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This process's rank, `< world_size`.
    pub rank: usize,
    /// Number of processes.
    pub world_size: usize,
}

impl Default for Shard {
    /// The whole dataset (`rank 0 of 1`).
    fn default() -> Self {
        Self { rank: 0, world_size: 1 }
    }
}

impl Shard {
    /// Rank `rank` of `world_size`; a config error unless `rank < world_size`.
    pub fn new(rank: usize, world_size: usize) -> Result<Self> {
        let s = Self { rank, world_size };
        s.validate()?;
        Ok(s)
    }

    /// This rank's share of an epoch's `order`: `per_rank` entries, every `world_size`-th one
    /// starting at `rank`, wrapping around `order` to pad the epoch to a multiple of the world
    /// size (torch's `DistributedSampler`).
    pub fn take(&self, order: &[usize], per_rank: usize) -> Vec<usize> {
        let n = order.len();
        if n == 0 {
            return Vec::new();
        }
        (0..per_rank * self.world_size).skip(self.rank).step_by(self.world_size).map(|p| order[p % n]).collect()
    }

    fn validate(&self) -> Result<()> {
        if self.world_size == 0 || self.rank >= self.world_size {
            return Err(TrainError::Config {
                key: "shard".into(),
                message: format!("rank {} of world size {} (need rank < world_size, world_size >= 1)", self.rank, self.world_size),
            });
        }
        Ok(())
    }
}

/// Options of a [`Loader`].
#[derive(Debug, Clone, PartialEq)]
pub struct LoaderConfig {
    /// Samples per batch (> 0).
    pub batch_size: usize,
    /// Draw a new permutation every epoch (else the dataset order).
    pub shuffle: bool,
    /// Seed of the permutations and of the augmentation generators.
    pub seed: u64,
    /// Drop this rank's last batch when it is smaller than `batch_size`.
    pub drop_last: bool,
    /// Which part of each epoch this process sees.
    pub shard: Shard,
    /// Per-channel mean of the default transform (empty: none).
    pub mean: Vec<f32>,
    /// Per-channel standard deviation of the default transform (empty: none).
    pub std: Vec<f32>,
    /// How many prepared batches may wait in the channel (>= 1).
    pub prefetch: usize,
}

impl Default for LoaderConfig {
    /// Batch size 32, shuffled, seed 0, partial last batch kept, one shard, no normalisation,
    /// prefetch 4.
    fn default() -> Self {
        Self { batch_size: 32, shuffle: true, seed: 0, drop_last: false, shard: Shard::default(), mean: vec![], std: vec![], prefetch: 4 }
    }
}

/// One batch: images `(B, C, H, W)` `f32` and labels `(B,)` `u32`, both on the CPU, and the
/// dataset indices of its samples.
#[derive(Debug, Clone)]
pub struct Batch {
    /// `(B, C, H, W)` `f32` images.
    pub images: Tensor,
    /// `(B,)` `u32` labels.
    pub labels: Tensor,
    /// Dataset index of each sample.
    pub indices: Vec<usize>,
}

/// The batching loader. Cheap to clone (the dataset and transform are shared).
#[derive(Clone)]
pub struct Loader {
    dataset: Arc<ImageDataset>,
    cfg: LoaderConfig,
    augment: Option<(AugmentFn, (usize, usize, usize))>,
}

impl fmt::Debug for Loader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Loader")
            .field("n", &self.dataset.n)
            .field("cfg", &self.cfg)
            .field("augment", &self.augment.as_ref().map(|(_, s)| s))
            .finish()
    }
}

/// SplitMix64 finaliser.
fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The loader's shuffle: a permutation of `0..n` that depends only on `(seed, epoch)`.
pub fn epoch_permutation(seed: u64, epoch: usize, n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = DeqRng::new(mix64(mix64(seed ^ 0x5EED_5A4D_1E55_0000) ^ epoch as u64));
    for i in (1..n).rev() {
        let j = ((rng.uniform() * (i + 1) as f64) as usize).min(i);
        order.swap(i, j);
    }
    order
}

/// The generator of sample `index` in epoch `epoch` of a run seeded with `seed`.
pub fn sample_rng(seed: u64, epoch: usize, index: usize) -> DeqRng {
    DeqRng::new(mix64(mix64(mix64(seed) ^ (epoch as u64)) ^ (index as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93)))
}

fn config_err(key: &str, message: String) -> TrainError {
    TrainError::Config { key: key.into(), message }
}

impl Loader {
    /// A loader over `dataset` with options `cfg` and the default transform (bytes / 255,
    /// then `normalize(mean, std)` if they are given). Config errors for a zero batch size or
    /// prefetch, a bad shard, or `mean`/`std` not matching the channel count or a zero std.
    pub fn new(dataset: Arc<ImageDataset>, cfg: LoaderConfig) -> Result<Self> {
        if cfg.batch_size == 0 {
            return Err(config_err("batch_size", "must be > 0".into()));
        }
        if cfg.prefetch == 0 {
            return Err(config_err("prefetch", "must be > 0".into()));
        }
        cfg.shard.validate()?;
        let c = dataset.channels;
        if !(cfg.mean.is_empty() && cfg.std.is_empty()) {
            if cfg.mean.len() != c || cfg.std.len() != c {
                return Err(config_err("mean/std", format!("{} means and {} stds for {c} channels", cfg.mean.len(), cfg.std.len())));
            }
            if cfg.std.iter().any(|&s| s == 0.0 || !s.is_finite()) {
                return Err(config_err("std", format!("{:?} has a zero or non-finite entry", cfg.std)));
            }
        }
        Ok(Self { dataset, cfg, augment: None })
    }

    /// Replaces the default transform by `f`, whose output holds `out_shape = (C, H, W)`
    /// values per sample (the batch tensor's trailing shape). The default normalisation is
    /// not applied on top: `f` does everything.
    pub fn with_augment(mut self, f: AugmentFn, out_shape: (usize, usize, usize)) -> Self {
        self.augment = Some((f, out_shape));
        self
    }

    /// The dataset.
    pub fn dataset(&self) -> &Arc<ImageDataset> {
        &self.dataset
    }

    /// The options.
    pub fn config(&self) -> &LoaderConfig {
        &self.cfg
    }

    /// The `(C, H, W)` shape of a sample in a batch.
    pub fn sample_shape(&self) -> (usize, usize, usize) {
        match &self.augment {
            Some((_, s)) => *s,
            None => (self.dataset.channels, self.dataset.height, self.dataset.width),
        }
    }

    /// Samples this rank sees per epoch: `ceil(n / world_size)` (the epoch order is padded by
    /// wrapping around so that every rank gets the same count).
    pub fn samples_per_rank(&self) -> usize {
        self.dataset.n.div_ceil(self.cfg.shard.world_size)
    }

    /// Batches this rank gets per epoch.
    pub fn num_batches(&self) -> usize {
        let s = self.samples_per_rank();
        if self.cfg.drop_last {
            s / self.cfg.batch_size
        } else {
            s.div_ceil(self.cfg.batch_size)
        }
    }

    /// This rank's dataset indices for `epoch`, in order: the epoch's permutation (identity
    /// without shuffle), padded by wrapping to a multiple of the world size, then every
    /// `world_size`-th entry starting at `rank` (torch's `DistributedSampler`).
    pub fn rank_indices(&self, epoch: usize) -> Vec<usize> {
        let n = self.dataset.n;
        let order: Vec<usize> = if self.cfg.shuffle { epoch_permutation(self.cfg.seed, epoch, n) } else { (0..n).collect() };
        self.cfg.shard.take(&order, self.samples_per_rank())
    }

    /// This rank's batches of dataset indices for `epoch` (after `drop_last`).
    pub fn batch_indices(&self, epoch: usize) -> Vec<Vec<usize>> {
        let idx = self.rank_indices(epoch);
        let bs = self.cfg.batch_size;
        let mut out: Vec<Vec<usize>> = idx.chunks(bs).map(<[usize]>::to_vec).collect();
        if self.cfg.drop_last && out.last().is_some_and(|b| b.len() < bs) {
            out.pop();
        }
        out
    }

    /// Builds the batch of the given dataset indices (synchronously), applying the transform
    /// with each sample's generator [`sample_rng`]`(seed, epoch, index)`. Samples are
    /// transformed in parallel.
    pub fn make_batch(&self, epoch: usize, indices: Vec<usize>) -> Result<Batch> {
        let ds = &*self.dataset;
        let (c, h, w) = (ds.channels, ds.height, ds.width);
        let (oc, oh, ow) = self.sample_shape();
        let per = oc * oh * ow;
        if let Some(&bad) = indices.iter().find(|&&i| i >= ds.n) {
            return Err(config_err("indices", format!("index {bad} out of range for a dataset of {}", ds.n)));
        }
        let seed = self.cfg.seed;
        let one = |&i: &usize| {
            let img = ds.image(i);
            match &self.augment {
                Some((f, _)) => f(img, c, h, w, &mut sample_rng(seed, epoch, i)),
                None => {
                    let mut x = to_f32(img);
                    if !self.cfg.mean.is_empty() {
                        normalize(&mut x, c, h, w, &self.cfg.mean, &self.cfg.std);
                    }
                    x
                }
            }
        };
        // On a pool of one thread, that thread is the trainer's (`run_on_pool`), waiting for
        // this batch: handing the samples to the pool would deadlock, so transform them here.
        let samples: Vec<Vec<f32>> = if rayon::current_thread_index().is_some() || rayon::current_num_threads() > 1 {
            indices.par_iter().map(one).collect()
        } else {
            indices.iter().map(one).collect()
        };
        let mut data = Vec::with_capacity(indices.len() * per);
        for (s, &i) in samples.iter().zip(&indices) {
            if s.len() != per {
                return Err(config_err(
                    "augment",
                    format!("transform returned {} values for sample {i}, expected {oc}x{oh}x{ow} = {per}", s.len()),
                ));
            }
            data.extend_from_slice(s);
        }
        let b = indices.len();
        let images = Tensor::from_vec(data, (b, oc, oh, ow), &Device::Cpu)?;
        let labels = Tensor::from_vec(indices.iter().map(|&i| ds.labels[i]).collect::<Vec<u32>>(), b, &Device::Cpu)?;
        Ok(Batch { images, labels, indices })
    }

    /// The batches of `epoch` for this rank, prepared on a background thread that keeps up
    /// to `prefetch` batches ready. Dropping the iterator early stops the thread. A panic in
    /// the transform is re-raised on the consuming thread.
    ///
    /// # Panics
    /// If the operating system refuses to start a thread.
    pub fn epoch(&self, epoch: usize) -> EpochIter {
        self.epoch_from(epoch, 0)
    }

    /// [`Loader::epoch`] without its first `skip` batches (which are not prepared): the rest
    /// of an epoch a checkpoint stopped in.
    pub fn epoch_from(&self, epoch: usize, skip: usize) -> EpochIter {
        let batches: Vec<Vec<usize>> = self.batch_indices(epoch).into_iter().skip(skip).collect();
        let remaining = batches.len();
        let (tx, rx) = sync_channel(self.cfg.prefetch);
        let me = self.clone();
        let handle = std::thread::Builder::new()
            .name(format!("deq-loader-e{epoch}"))
            .spawn(move || {
                for idx in batches {
                    let r = me.make_batch(epoch, idx);
                    let stop = r.is_err();
                    if tx.send(r).is_err() || stop {
                        return;
                    }
                }
            })
            .expect("failed to spawn the loader thread");
        EpochIter { rx: Some(rx), handle: Some(handle), remaining }
    }
}

/// The iterator returned by [`Loader::epoch`]. After an error it ends.
#[derive(Debug)]
pub struct EpochIter {
    rx: Option<Receiver<Result<Batch>>>,
    handle: Option<JoinHandle<()>>,
    remaining: usize,
}

impl EpochIter {
    fn join(&mut self) {
        if let Some(h) = self.handle.take() {
            if let Err(payload) = h.join() {
                if !std::thread::panicking() {
                    std::panic::resume_unwind(payload);
                }
            }
        }
    }
}

impl Iterator for EpochIter {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        let rx = self.rx.as_ref()?;
        match rx.recv() {
            Ok(r) => {
                self.remaining = self.remaining.saturating_sub(1);
                if r.is_err() {
                    self.remaining = 0;
                    self.rx = None;
                    self.join();
                }
                Some(r)
            }
            Err(_) => {
                // The worker finished (or panicked): re-raise its panic, if any.
                self.rx = None;
                self.remaining = 0;
                self.join();
                None
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl ExactSizeIterator for EpochIter {}

impl Drop for EpochIter {
    fn drop(&mut self) {
        // Closing the receiver makes the worker's next send fail, so it stops.
        self.rx = None;
        self.join();
    }
}
