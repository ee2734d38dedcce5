//! IDX reader (the MNIST file format), for raw or gzipped files.
//!
//! An IDX file starts with a big-endian magic `0x0000TTDD` (`TT` the element type, `0x08` for
//! unsigned bytes; `DD` the number of dimensions), then one big-endian `u32` per dimension,
//! then the elements. MNIST images have magic 2051 (`0x00000803`: count, rows, cols) and
//! labels 2049 (`0x00000801`: count). Gzip is detected by its magic bytes `1f 8b`, not by the
//! file name.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::data::dataset::ImageDataset;
use crate::error::{Result, TrainError};

/// Magic number of an IDX file of `u8` images (3 dimensions).
pub const IDX_IMAGES_MAGIC: u32 = 2051;
/// Magic number of an IDX file of `u8` labels (1 dimension).
pub const IDX_LABELS_MAGIC: u32 = 2049;

/// Reads a whole file, gunzipping it if it starts with the gzip magic bytes `1f 8b`.
/// Errors name `path`: [`TrainError::Io`] if it cannot be read, [`TrainError::Format`] if the
/// gzip stream is corrupt or truncated.
pub fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
    if raw.len() >= 2 && raw[0] == 0x1f && raw[1] == 0x8b {
        let mut out = Vec::with_capacity(raw.len() * 4);
        flate2::read::MultiGzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| TrainError::format(path, format!("corrupt or truncated gzip stream: {e}")))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Parses the header of an IDX `u8` array with the expected magic and returns its dimensions
/// and element bytes, checking the declared size against the bytes present.
fn parse_idx_u8<'a>(path: &Path, bytes: &'a [u8], magic: u32, what: &str) -> Result<(Vec<usize>, &'a [u8])> {
    let ndims = (magic & 0xff) as usize;
    let header = 4 + 4 * ndims;
    if bytes.len() < 4 {
        return Err(TrainError::format(
            path,
            format!("{} bytes is too short for an IDX header (truncated or empty file)", bytes.len()),
        ));
    }
    let found = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if found != magic {
        let hint = match found {
            IDX_IMAGES_MAGIC => " (this is an IDX image file)".to_string(),
            IDX_LABELS_MAGIC => " (this is an IDX label file)".to_string(),
            _ if bytes[0] == 0x1f && bytes[1] == 0x8b => " (gzip data inside gzip?)".to_string(),
            _ => String::new(),
        };
        return Err(TrainError::format(
            path,
            format!("bad IDX magic {found} (0x{found:08x}), expected {magic} (0x{magic:08x}) for an IDX {what} file{hint}"),
        ));
    }
    if bytes.len() < header {
        return Err(TrainError::format(
            path,
            format!("truncated IDX header: {} bytes, the {ndims}-dimensional header needs {header}", bytes.len()),
        ));
    }
    let dims: Vec<usize> = (0..ndims)
        .map(|d| {
            let o = 4 + 4 * d;
            u32::from_be_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]) as usize
        })
        .collect();
    let declared = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| TrainError::format(path, format!("IDX dimensions {dims:?} overflow")))?;
    let actual = bytes.len() - header;
    if actual < declared {
        return Err(TrainError::format(
            path,
            format!("truncated IDX {what} file: header declares {dims:?} = {declared} bytes of data, file holds {actual}"),
        ));
    }
    if actual > declared {
        return Err(TrainError::format(
            path,
            format!("IDX {what} file has {} trailing bytes after the {declared} declared by {dims:?}", actual - declared),
        ));
    }
    Ok((dims, &bytes[header..]))
}

/// Reads an IDX image file (magic 2051), raw or gzipped: returns `(pixels, count, rows, cols)`,
/// `pixels` holding `count * rows * cols` bytes, image after image, row-major.
pub fn read_idx_images(path: impl AsRef<Path>) -> Result<(Vec<u8>, usize, usize, usize)> {
    let path = path.as_ref();
    let mut bytes = read_maybe_gz(path)?;
    let (dims, _) = parse_idx_u8(path, &bytes, IDX_IMAGES_MAGIC, "image")?;
    bytes.drain(..16);
    Ok((bytes, dims[0], dims[1], dims[2]))
}

/// Reads an IDX label file (magic 2049), raw or gzipped.
pub fn read_idx_labels(path: impl AsRef<Path>) -> Result<Vec<u32>> {
    let path = path.as_ref();
    let bytes = read_maybe_gz(path)?;
    let (_, data) = parse_idx_u8(path, &bytes, IDX_LABELS_MAGIC, "label")?;
    Ok(data.iter().map(|&b| b as u32).collect())
}

/// `dir/<stem>.gz` if it exists, else `dir/<stem>` if it exists, else an I/O error naming both.
fn find_idx(dir: &Path, stem: &str) -> Result<PathBuf> {
    let gz = dir.join(format!("{stem}.gz"));
    let raw = dir.join(stem);
    if gz.is_file() {
        Ok(gz)
    } else if raw.is_file() {
        Ok(raw)
    } else {
        Err(TrainError::io(
            &gz,
            std::io::Error::new(std::io::ErrorKind::NotFound, format!("neither {stem}.gz nor {stem} found in {}", dir.display())),
        ))
    }
}

/// Loads MNIST from `dir`: `train-images-idx3-ubyte[.gz]` + `train-labels-idx1-ubyte[.gz]`
/// when `train`, else the `t10k-` pair. Checks that both files hold the same count, every
/// label is `< 10`; the result has 1 channel, 28x28 images (as declared by the file) and
/// 10 classes.
pub fn load_mnist(dir: &Path, train: bool) -> Result<ImageDataset> {
    let prefix = if train { "train" } else { "t10k" };
    let img_path = find_idx(dir, &format!("{prefix}-images-idx3-ubyte"))?;
    let lab_path = find_idx(dir, &format!("{prefix}-labels-idx1-ubyte"))?;
    let (images, n, rows, cols) = read_idx_images(&img_path)?;
    let labels = read_idx_labels(&lab_path)?;
    if labels.len() != n {
        return Err(TrainError::format(
            &img_path,
            format!("holds {n} images but {} holds {} labels", lab_path.display(), labels.len()),
        ));
    }
    if let Some((i, &l)) = labels.iter().enumerate().find(|(_, &l)| l >= 10) {
        return Err(TrainError::format(&lab_path, format!("label {l} at index {i} is not an MNIST digit (0..=9)")));
    }
    Ok(ImageDataset { images, labels, n, channels: 1, height: rows, width: cols, classes: 10 })
}
