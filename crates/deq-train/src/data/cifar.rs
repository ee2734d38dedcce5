//! CIFAR-10 binary format: `data_batch_{1..5}.bin` (train) and `test_batch.bin` (test), each a
//! sequence of 3073-byte records: 1 label byte (0..=9), then 1024 red, 1024 green and 1024 blue
//! bytes (32x32, row-major).

use std::io::Write;
use std::path::Path;

use crate::data::dataset::ImageDataset;
use crate::error::{Result, TrainError};

/// Pixel bytes per CIFAR-10 image (3 x 32 x 32).
pub const CIFAR_IMAGE_BYTES: usize = 3 * 32 * 32;
/// Bytes per CIFAR-10 record (label byte + pixels).
pub const CIFAR_RECORD_BYTES: usize = 1 + CIFAR_IMAGE_BYTES;
/// The training files, in order.
pub const CIFAR10_TRAIN_FILES: [&str; 5] =
    ["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin"];
/// The test file.
pub const CIFAR10_TEST_FILE: &str = "test_batch.bin";

/// Reads one CIFAR-10 binary file: returns `(pixels, labels)`, `pixels` holding
/// `labels.len() * 3072` CHW bytes. Errors (naming the file) if it is empty, its size is not a
/// multiple of 3073, or a label is `> 9` (naming the record index).
pub fn read_cifar10_file(path: impl AsRef<Path>) -> Result<(Vec<u8>, Vec<u32>)> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
    parse_cifar10(&bytes).map_err(|m| TrainError::format(path, m))
}

/// Parses the bytes of one CIFAR-10 binary file ([`read_cifar10_file`] without the file: the
/// error is the bare message). The record count comes from the length, so nothing is sized
/// by the content.
pub fn parse_cifar10(bytes: &[u8]) -> std::result::Result<(Vec<u8>, Vec<u32>), String> {
    if bytes.is_empty() {
        return Err("empty CIFAR-10 file".into());
    }
    if bytes.len() % CIFAR_RECORD_BYTES != 0 {
        return Err(format!(
            "size {} is not a multiple of the {CIFAR_RECORD_BYTES}-byte CIFAR-10 record ({} whole records + {} bytes): truncated or not a CIFAR-10 binary file",
            bytes.len(),
            bytes.len() / CIFAR_RECORD_BYTES,
            bytes.len() % CIFAR_RECORD_BYTES
        ));
    }
    let n = bytes.len() / CIFAR_RECORD_BYTES;
    let mut images = Vec::with_capacity(n * CIFAR_IMAGE_BYTES);
    let mut labels = Vec::with_capacity(n);
    for (i, rec) in bytes.chunks_exact(CIFAR_RECORD_BYTES).enumerate() {
        if rec[0] > 9 {
            return Err(format!("record {i}: label {} is not a CIFAR-10 class (0..=9)", rec[0]));
        }
        labels.push(rec[0] as u32);
        images.extend_from_slice(&rec[1..]);
    }
    Ok((images, labels))
}

/// Loads CIFAR-10 from `dir`: the five `data_batch_*.bin` files in order when `train` (all
/// must be present; a missing one is an I/O error naming it), else `test_batch.bin`.
pub fn load_cifar10(dir: &Path, train: bool) -> Result<ImageDataset> {
    let files: Vec<&str> = if train { CIFAR10_TRAIN_FILES.to_vec() } else { vec![CIFAR10_TEST_FILE] };
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for f in files {
        let (im, lb) = read_cifar10_file(dir.join(f))?;
        images.extend_from_slice(&im);
        labels.extend_from_slice(&lb);
    }
    Ok(ImageDataset { n: labels.len(), images, labels, channels: 3, height: 32, width: 32, classes: 10 })
}

/// Writes `labels.len()` records in the CIFAR-10 binary format to `path` (used for fixtures).
/// `images` must hold `labels.len() * 3072` CHW bytes and every label must be `<= 9`;
/// otherwise a [`TrainError::Format`] naming `path` is returned and nothing is written.
pub fn write_cifar10_file(path: impl AsRef<Path>, images: &[u8], labels: &[u32]) -> Result<()> {
    let path = path.as_ref();
    if images.len() != labels.len() * CIFAR_IMAGE_BYTES {
        return Err(TrainError::format(
            path,
            format!("cannot write {} labels with {} pixel bytes (expected {})", labels.len(), images.len(), labels.len() * CIFAR_IMAGE_BYTES),
        ));
    }
    if let Some((i, &l)) = labels.iter().enumerate().find(|(_, &l)| l > 9) {
        return Err(TrainError::format(path, format!("record {i}: label {l} is not a CIFAR-10 class (0..=9)")));
    }
    let mut buf = Vec::with_capacity(labels.len() * CIFAR_RECORD_BYTES);
    for (l, img) in labels.iter().zip(images.chunks_exact(CIFAR_IMAGE_BYTES)) {
        buf.push(*l as u8);
        buf.extend_from_slice(img);
    }
    let mut f = std::fs::File::create(path).map_err(|e| TrainError::io(path, e))?;
    f.write_all(&buf).map_err(|e| TrainError::io(path, e))?;
    f.flush().map_err(|e| TrainError::io(path, e))
}
