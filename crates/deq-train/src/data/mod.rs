//! Dataset readers, augmentations and the background batching loader.
//!
//! | module | what it holds |
//! |---|---|
//! | [`alloc`] | fallible allocation of buffers sized by a file (the bounded-allocation rule) |
//! | [`dataset`] | [`ImageDataset`], the in-memory image classification dataset |
//! | [`idx`] | IDX reader (MNIST), raw or gzipped |
//! | [`cifar`] | CIFAR-10 binary reader and writer |
//! | [`image_decode`] | the size-limited image decoder every image reader uses |
//! | [`image_folder`] | ImageNet-style `root/<class>/*.png|jpg` reader |
//! | [`npy`] | NumPy `.npy` reader and writer |
//! | [`png_out`] | atomic PNG writing (grey or RGB) |
//! | [`augment`] | seeded augmentations on CHW `f32` samples |
//! | [`loader`] | shuffling, sharded, prefetching [`Loader`] producing candle batches |
//!
//! Every reader names the offending file in its errors ([`crate::TrainError::Io`] or
//! [`crate::TrainError::Format`]) and never panics on bad input.
//!
//! Data location: experiments look for a dataset folder with [`find_dataset_dir`], which
//! honours `DEQ_DATA_DIR` (e.g. `DEQ_DATA_DIR=/data/deq`) before the small committed
//! copies under the repository's `datasets/`.

pub mod alloc;
pub mod augment;
pub mod cifar;
pub mod dataset;
pub mod idx;
pub mod image_decode;
pub mod image_folder;
pub mod loader;
pub mod npy;
pub mod png_out;

use std::path::PathBuf;

pub use alloc::try_zeros;
pub use cifar::{load_cifar10, parse_cifar10, read_cifar10_file, write_cifar10_file};
pub use dataset::ImageDataset;
pub use idx::{load_mnist, parse_idx, read_idx_images, read_idx_labels};
pub use image_decode::decode_image;
pub use image_folder::{is_image, list_dir, load_image, load_image_folder, scan_image_folder};
pub use png_out::write_png;
pub use npy::{parse_npy, read_npy, write_npy_f32, NpyArray};
pub use loader::{epoch_permutation, sample_rng, AugmentFn, Batch, EpochIter, Loader, LoaderConfig, Shard};

/// The folder of dataset `name`: `$DEQ_DATA_DIR/<name>` if `DEQ_DATA_DIR` is set and that
/// folder exists, else `./datasets/<name>`, else the repository's `datasets/<name>` (as seen
/// when this crate was compiled); `None` if none exists.
pub fn find_dataset_dir(name: &str) -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(root) = std::env::var_os("DEQ_DATA_DIR") {
        candidates.push(PathBuf::from(root).join(name));
    }
    candidates.push(PathBuf::from("datasets").join(name));
    candidates.push(PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../datasets")).join(name));
    candidates.into_iter().find(|p| p.is_dir())
}
