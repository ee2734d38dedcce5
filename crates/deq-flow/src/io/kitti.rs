//! KITTI-2015 (and HD1K) flow PNGs: 16-bit RGB, red `u * 64 + 2^15`, green `v * 64 + 2^15`,
//! blue 1 where the ground truth is valid and 0 elsewhere.
//!
//! PNG payloads are compressed, so their size cannot be checked against the file's; instead the
//! image decoder of [`super::frames`] caps the image at [`super::frames::MAX_SIDE`]
//! pixels a side and 1 GiB of memory.

use std::path::Path;

use crate::error::{FlowError, Result};
use crate::flow::Flow;

const OFFSET: f32 = 32768.0;
const SCALE: f32 = 64.0;

/// Reads a KITTI flow PNG: the flow and its valid mask.
pub fn read(path: &Path) -> Result<Flow> {
    let bytes = std::fs::read(path).map_err(|e| FlowError::io(path, e))?;
    let img = super::frames::decode(path, &bytes)?;
    let rgb = match img {
        image::DynamicImage::ImageRgb16(b) => b,
        other => return Err(FlowError::format(path, format!("a KITTI flow PNG is 16-bit RGB, this one is {:?}", other.color()))),
    };
    let (width, height) = (rgb.width() as usize, rgb.height() as usize);
    let mut uv = Vec::with_capacity(width * height * 2);
    let mut valid = Vec::with_capacity(width * height);
    for p in rgb.as_raw().chunks_exact(3) {
        uv.push((p[0] as f32 - OFFSET) / SCALE);
        uv.push((p[1] as f32 - OFFSET) / SCALE);
        valid.push(if p[2] > 0 { 1.0 } else { 0.0 });
    }
    Ok(Flow { height, width, uv, valid: Some(valid) })
}

/// The 16-bit RGB samples of a KITTI flow PNG for `flow` (values rounded to 1/64 pixel and
/// clamped to the format's +-512 pixel range; every pixel valid unless the flow has a mask).
pub fn encode(flow: &Flow) -> Vec<u16> {
    let q = |v: f32| (v * SCALE + OFFSET).round().clamp(0.0, 65535.0) as u16;
    let valid = flow.validity();
    (0..flow.height * flow.width).flat_map(|i| [q(flow.uv[2 * i]), q(flow.uv[2 * i + 1]), valid[i] as u16]).collect()
}

/// Writes a KITTI flow PNG atomically.
pub fn write(path: &Path, flow: &Flow) -> Result<()> {
    let (w, h) = (flow.width as u32, flow.height as u32);
    let buf = image::ImageBuffer::<image::Rgb<u16>, Vec<u16>>::from_raw(w, h, encode(flow)).ok_or_else(|| FlowError::format(path, "flow size does not match its values"))?;
    deq_train::write_atomic(path, |tmp| {
        image::DynamicImage::ImageRgb16(buf).save_with_format(tmp, image::ImageFormat::Png).map_err(|e| deq_train::TrainError::format(tmp, format!("writing PNG: {e}")))
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_flow_to_a_64th_and_the_mask() {
        let dir = std::env::temp_dir().join(format!("deq-flow-kitti-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (height, width) = (3, 4);
        let uv: Vec<f32> = (0..24).map(|i| (i as f32 - 11.0) * 13.37).collect();
        let valid: Vec<f32> = (0..12).map(|i| (i % 3 != 0) as u8 as f32).collect();
        let flow = Flow { height, width, uv: uv.clone(), valid: Some(valid.clone()) };
        let path = dir.join("000000_10.png");
        write(&path, &flow).unwrap();
        let back = read(&path).unwrap();
        assert_eq!((back.height, back.width), (3, 4));
        assert_eq!(back.valid.as_deref(), Some(&valid[..]));
        for (a, b) in back.uv.iter().zip(&uv) {
            assert!((a - b).abs() <= 0.5 / 64.0 + 1e-4, "{a} vs {b}");
        }
        // The documented encoding: pixel (0, 1) has u = -9 * 13.37.
        let raw = image::open(&path).unwrap().into_rgb16();
        let p = raw.get_pixel(1, 0);
        assert_eq!(p[0], (-9.0f32 * 13.37 * 64.0 + 32768.0).round() as u16);
        assert_eq!(p[2], 1);
        // An 8-bit PNG is not a flow file.
        let grey = dir.join("grey.png");
        image::GrayImage::new(4, 3).save(&grey).unwrap();
        let err = read(&grey).unwrap_err().to_string();
        assert!(err.contains("grey.png") && err.contains("16-bit"), "{err}");
        std::fs::write(&grey, b"\x89PNG\r\n\x1a\nrubbish").unwrap();
        assert!(read(&grey).unwrap_err().to_string().contains("grey.png"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
