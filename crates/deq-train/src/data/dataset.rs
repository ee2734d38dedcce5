//! The in-memory image classification dataset every reader in [`crate::data`] produces.

use crate::error::{Result, TrainError};

/// An in-memory image classification dataset: `n` images of `channels x height x width` bytes
/// each, stored as CHW planes one after another, and one label per image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageDataset {
    /// Pixel bytes, `n * channels * height * width`, image after image, each image CHW.
    pub images: Vec<u8>,
    /// One label per image, each `< classes`.
    pub labels: Vec<u32>,
    /// Number of images.
    pub n: usize,
    /// Channels per image (1 for MNIST, 3 for RGB).
    pub channels: usize,
    /// Image height in pixels.
    pub height: usize,
    /// Image width in pixels.
    pub width: usize,
    /// Number of classes.
    pub classes: usize,
}

impl ImageDataset {
    /// A dataset from its parts, checking that the sizes agree and that every label is
    /// `< classes`; a mismatch is a [`TrainError::Config`] with key `dataset`.
    pub fn new(
        images: Vec<u8>,
        labels: Vec<u32>,
        channels: usize,
        height: usize,
        width: usize,
        classes: usize,
    ) -> Result<Self> {
        let n = labels.len();
        let per = channels * height * width;
        let bad = |message: String| TrainError::Config { key: "dataset".into(), message };
        if images.len() != n * per {
            return Err(bad(format!(
                "{} pixel bytes for {n} labels of {channels}x{height}x{width} (expected {})",
                images.len(),
                n * per
            )));
        }
        if let Some((i, &l)) = labels.iter().enumerate().find(|(_, &l)| l as usize >= classes) {
            return Err(bad(format!("label {l} of sample {i} is not < classes = {classes}")));
        }
        Ok(Self { images, labels, n, channels, height, width, classes })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether the dataset holds no image.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Bytes per image, `channels * height * width`.
    pub fn sample_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// The CHW bytes of image `i`.
    ///
    /// # Panics
    /// If `i >= len()`.
    pub fn image(&self, i: usize) -> &[u8] {
        assert!(i < self.n, "image index {i} out of range for a dataset of {}", self.n);
        let s = self.sample_len();
        &self.images[i * s..(i + 1) * s]
    }

    /// The label of image `i`.
    ///
    /// # Panics
    /// If `i >= len()`.
    pub fn label(&self, i: usize) -> u32 {
        self.labels[i]
    }

    /// How many images carry each label (`classes` entries).
    pub fn label_histogram(&self) -> Vec<usize> {
        let mut h = vec![0usize; self.classes];
        for &l in &self.labels {
            if let Some(c) = h.get_mut(l as usize) {
                *c += 1;
            }
        }
        h
    }

    /// A new dataset holding the images at `idx`, in that order (repeats allowed).
    ///
    /// # Panics
    /// If an index is `>= len()`.
    pub fn subset(&self, idx: &[usize]) -> ImageDataset {
        let s = self.sample_len();
        let mut images = Vec::with_capacity(idx.len() * s);
        let mut labels = Vec::with_capacity(idx.len());
        for &i in idx {
            images.extend_from_slice(self.image(i));
            labels.push(self.labels[i]);
        }
        ImageDataset {
            images,
            labels,
            n: idx.len(),
            channels: self.channels,
            height: self.height,
            width: self.width,
            classes: self.classes,
        }
    }

    /// Keeps only the first `n` images (no-op when `n >= len()`).
    pub fn truncate(&mut self, n: usize) {
        if n < self.n {
            self.n = n;
            self.labels.truncate(n);
            self.images.truncate(n * self.sample_len());
        }
    }
}
