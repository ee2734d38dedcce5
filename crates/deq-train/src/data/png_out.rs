//! Writing 8-bit PNG files atomically (samples, grids, pictures of results).

use std::path::Path;

use crate::checkpoint::write_atomic;
use crate::error::{Result, TrainError};

/// Writes `height * width * channels` bytes (row-major, channels interleaved; 1 channel: grey,
/// 3: RGB) as a PNG, atomically (a temporary file renamed into place).
pub fn write_png(path: &Path, width: usize, height: usize, channels: usize, bytes: &[u8]) -> Result<()> {
    if bytes.len() != width * height * channels || width == 0 || height == 0 {
        return Err(TrainError::format(path, format!("{} bytes for a {width}x{height} image of {channels} channels", bytes.len())));
    }
    let save = |tmp: &Path| -> Result<()> {
        let r = match channels {
            1 => image::GrayImage::from_raw(width as u32, height as u32, bytes.to_vec()).map(|i| i.save_with_format(tmp, image::ImageFormat::Png)),
            3 => image::RgbImage::from_raw(width as u32, height as u32, bytes.to_vec()).map(|i| i.save_with_format(tmp, image::ImageFormat::Png)),
            _ => return Err(TrainError::format(path, format!("{channels} channels: 1 or 3"))),
        };
        match r {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(TrainError::format(tmp, format!("writing PNG: {e}"))),
            None => Err(TrainError::format(tmp, "image size does not match its bytes")),
        }
    };
    write_atomic(path, save)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_grey_and_rgb_and_refuses_wrong_sizes() {
        let dir = std::env::temp_dir().join(format!("deq-png-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let g: Vec<u8> = (0..12).map(|i| i * 20).collect();
        write_png(&dir.join("g.png"), 4, 3, 1, &g).unwrap();
        assert_eq!(image::open(dir.join("g.png")).unwrap().to_luma8().into_raw(), g);
        let rgb: Vec<u8> = (0..24).map(|i| i * 10).collect();
        write_png(&dir.join("c.png"), 4, 2, 3, &rgb).unwrap();
        assert_eq!(image::open(dir.join("c.png")).unwrap().to_rgb8().into_raw(), rgb);
        assert!(write_png(&dir.join("x.png"), 4, 4, 1, &g).unwrap_err().to_string().contains("x.png"));
        assert!(write_png(&dir.join("y.png"), 2, 2, 2, &[0; 8]).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
