//! ImageNet-style image folders: `root/<class_name>/*.{png,jpg,jpeg}` (extension matched
//! case-insensitively). Classes are the sub-folders of `root`, sorted by name; a class's index
//! is its position in that order (torchvision's `ImageFolder` convention).

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::data::dataset::ImageDataset;
use crate::error::{Result, TrainError};

/// File extensions (lower case) recognised as images.
pub const IMAGE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// Whether `path` has an image extension of [`IMAGE_EXTENSIONS`] (any case).
pub fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .map(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        .unwrap_or(false)
}

/// The entries of `dir`, sorted by path, without hidden ones (names starting with `.`);
/// errors name `dir`.
pub fn list_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|e| TrainError::io(dir, e))?;
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| TrainError::io(dir, e))?;
        if !entry.file_name().to_string_lossy().starts_with('.') {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

/// Lists the images under `root`: returns `(samples, class_names)`, `samples` holding each
/// image's path and class index (classes sorted by name, files sorted by path). Hidden
/// entries (names starting with `.`) are skipped. Errors naming `root` if it cannot be read
/// or holds no class folder; a non-UTF-8 class name is a format error naming that folder.
pub fn scan_image_folder(root: impl AsRef<Path>) -> Result<(Vec<(PathBuf, u32)>, Vec<String>)> {
    let root = root.as_ref();
    let mut classes = Vec::new();
    for p in list_dir(root)? {
        let name = p.file_name().and_then(|n| n.to_str()).map(str::to_owned);
        if !p.is_dir() {
            continue;
        }
        match name {
            Some(n) => classes.push((n, p)),
            None => return Err(TrainError::format(&p, "class folder name is not valid UTF-8")),
        }
    }
    if classes.is_empty() {
        return Err(TrainError::format(root, "no class folders (expected root/<class_name>/*.png|jpg|jpeg)"));
    }
    let mut samples = Vec::new();
    for (k, (_, dir)) in classes.iter().enumerate() {
        for p in list_dir(dir)? {
            if p.is_file() && is_image(&p) {
                samples.push((p, k as u32));
            }
        }
    }
    Ok((samples, classes.into_iter().map(|(n, _)| n).collect()))
}

/// Decodes the image at `path` as RGB and returns `(pixels, height, width)`, `pixels` holding
/// `3 * height * width` CHW bytes. With `size = Some((height, width))` the image is resized to
/// exactly that size with a triangle (bilinear, antialiased when shrinking) filter. Decode
/// errors are [`TrainError::Format`] naming the file.
pub fn load_image(path: impl AsRef<Path>, size: Option<(u32, u32)>) -> Result<(Vec<u8>, usize, usize)> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
    let img = crate::data::decode_image(&bytes).map_err(|m| TrainError::format(path, m))?;
    let mut rgb = img.to_rgb8();
    if let Some((h, w)) = size {
        if h == 0 || w == 0 {
            return Err(TrainError::Config { key: "image_size".into(), message: format!("cannot resize {} to {h}x{w}", path.display()) });
        }
        if rgb.dimensions() != (w, h) {
            rgb = image::imageops::resize(&rgb, w, h, image::imageops::FilterType::Triangle);
        }
    }
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    let hw = h * w;
    let mut chw = vec![0u8; 3 * hw];
    for (i, px) in rgb.as_raw().chunks_exact(3).enumerate() {
        chw[i] = px[0];
        chw[hw + i] = px[1];
        chw[2 * hw + i] = px[2];
    }
    Ok((chw, h, w))
}

/// Loads every image of an image folder into memory (see [`scan_image_folder`]), resized to
/// `size = (height, width)` when given; without `size` all images must already share one
/// size (a differing one is a format error naming it). Decoding runs in parallel. The class
/// names are those returned by [`scan_image_folder`].
pub fn load_image_folder(root: impl AsRef<Path>, size: Option<(u32, u32)>) -> Result<ImageDataset> {
    let root = root.as_ref();
    let (samples, classes) = scan_image_folder(root)?;
    let decoded: Vec<(Vec<u8>, usize, usize)> =
        samples.par_iter().map(|(p, _)| load_image(p, size)).collect::<Result<_>>()?;
    let (h, w) = match decoded.first() {
        Some(&(_, h, w)) => (h, w),
        None => match size {
            Some((h, w)) => (h as usize, w as usize),
            None => (0, 0),
        },
    };
    let mut images = Vec::with_capacity(decoded.len() * 3 * h * w);
    for ((px, ih, iw), (p, _)) in decoded.into_iter().zip(&samples) {
        if (ih, iw) != (h, w) {
            return Err(TrainError::format(
                p,
                format!("image is {ih}x{iw} but the first image of {} is {h}x{w}; pass a size to resize", root.display()),
            ));
        }
        images.extend_from_slice(&px);
    }
    let labels: Vec<u32> = samples.iter().map(|(_, l)| *l).collect();
    Ok(ImageDataset { n: labels.len(), images, labels, channels: 3, height: h, width: w, classes: classes.len() })
}
