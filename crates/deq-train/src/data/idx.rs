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

/// Whether `bytes` start with the gzip magic `1f 8b` (detection is by content, not name).
fn is_gzip(bytes: &[u8]) -> bool {
    bytes.len() >= 2 && bytes[0] == 0x1f && bytes[1] == 0x8b
}

/// Deflate's largest compression ratio: a gzip file cannot decompress to more than this many
/// times its size, which bounds what an IDX header inside one may declare.
const DEFLATE_MAX_RATIO: usize = 1032;

/// Decodes an IDX `u8` array with the expected magic from the bytes of a raw or gzipped file:
/// its dimensions and elements. The header is read first and its declared size checked
/// against what the file can hold (the raw length, or [`DEFLATE_MAX_RATIO`] times the gzip
/// length) before the elements are decompressed, and decompression stops one byte past the
/// declared size, so a header or stream that lies cannot make it allocate more than the data
/// present. Errors are bare messages (the path readers add the file).
pub fn parse_idx(raw: &[u8], magic: u32, what: &str) -> std::result::Result<(Vec<usize>, Vec<u8>), String> {
    let ndims = (magic & 0xff) as usize;
    let header_len = 4 + 4 * ndims;
    let gz = is_gzip(raw);
    let mut stream: Box<dyn Read + '_> =
        if gz { Box::new(flate2::read::MultiGzDecoder::new(raw)) } else { Box::new(raw) };
    let gz_err = |e: std::io::Error| format!("corrupt or truncated gzip stream: {e}");
    // Up to the header's length, fewer if the stream ends first.
    let mut header = Vec::with_capacity(header_len);
    (&mut stream).take(header_len as u64).read_to_end(&mut header).map_err(gz_err)?;
    if header.len() < 4 {
        return Err(format!("{} bytes is too short for an IDX header (truncated or empty file)", header.len()));
    }
    let found = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    if found != magic {
        let hint = match found {
            IDX_IMAGES_MAGIC => " (this is an IDX image file)",
            IDX_LABELS_MAGIC => " (this is an IDX label file)",
            _ if is_gzip(&header) => " (gzip data inside gzip?)",
            _ => "",
        };
        return Err(format!(
            "bad IDX magic {found} (0x{found:08x}), expected {magic} (0x{magic:08x}) for an IDX {what} file{hint}"
        ));
    }
    if header.len() < header_len {
        return Err(format!(
            "truncated IDX header: {} bytes, the {ndims}-dimensional header needs {header_len}",
            header.len()
        ));
    }
    let dims: Vec<usize> = header[4..].chunks_exact(4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize).collect();
    let declared = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).ok_or_else(|| format!("IDX dimensions {dims:?} overflow"))?;
    let room = if gz { raw.len().saturating_mul(DEFLATE_MAX_RATIO) } else { raw.len() - header_len };
    if declared > room {
        return Err(format!(
            "truncated IDX {what} file: header declares {dims:?} = {declared} bytes of data, {}",
            if gz { format!("more than a {}-byte gzip file can hold", raw.len()) } else { format!("file holds {room}") }
        ));
    }
    let mut data = Vec::new();
    stream.take(declared as u64 + 1).read_to_end(&mut data).map_err(gz_err)?;
    if data.len() < declared {
        return Err(format!(
            "truncated IDX {what} file: header declares {dims:?} = {declared} bytes of data, file holds {}",
            data.len()
        ));
    }
    if data.len() > declared {
        return Err(if gz {
            format!("corrupt gzip stream or trailing data: it decompresses to more than the {declared} bytes declared by {dims:?}")
        } else {
            format!("IDX {what} file has {} trailing bytes after the {declared} declared by {dims:?}", raw.len() - header_len - declared)
        });
    }
    Ok((dims, data))
}

/// Reads an IDX image file (magic 2051), raw or gzipped: returns `(pixels, count, rows, cols)`,
/// `pixels` holding `count * rows * cols` bytes, image after image, row-major.
/// Allocation is bounded by the file (see [`parse_idx`]); errors name `path`.
pub fn read_idx_images(path: impl AsRef<Path>) -> Result<(Vec<u8>, usize, usize, usize)> {
    let path = path.as_ref();
    let raw = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
    let (dims, pixels) = parse_idx(&raw, IDX_IMAGES_MAGIC, "image").map_err(|m| TrainError::format(path, m))?;
    Ok((pixels, dims[0], dims[1], dims[2]))
}

/// Reads an IDX label file (magic 2049), raw or gzipped. Allocation is bounded by the file
/// (see [`parse_idx`]); errors name `path`.
pub fn read_idx_labels(path: impl AsRef<Path>) -> Result<Vec<u32>> {
    let path = path.as_ref();
    let raw = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
    let (_, data) = parse_idx(&raw, IDX_LABELS_MAGIC, "label").map_err(|m| TrainError::format(path, m))?;
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
