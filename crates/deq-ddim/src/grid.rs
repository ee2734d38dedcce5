//! Images out: a batch in `[-1, 1]` as 8-bit pixels, grids of samples, single PNGs, and
//! images in (a PNG/JPEG target for inversion).

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::error::{DdimError, Result};

/// `(N, C, H, W)` in `[-1, 1]` to per-image row-major bytes with interleaved channels
/// (`round(clamp((x + 1) / 2, 0, 1) * 255)`, the DDIM code's inverse transform).
pub fn to_bytes(images: &Tensor) -> Result<Vec<Vec<u8>>> {
    let (n, c, h, w) = images.dims4()?;
    let v: Vec<f32> = images.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    Ok((0..n).map(|i| {
        let img = &v[i * c * h * w..(i + 1) * c * h * w];
        let mut out = vec![0u8; c * h * w];
        for ch in 0..c {
            for p in 0..h * w {
                out[p * c + ch] = (((img[ch * h * w + p] + 1.0) / 2.0).clamp(0.0, 1.0) * 255.0).round() as u8;
            }
        }
        out
    }).collect())
}

/// The bytes of a grid of `images` (`(N, C, H, W)` in `[-1, 1]`), `cols` per row (0: the
/// smallest square), separated by `pad` black pixels: `(width, height, bytes)`.
pub fn grid_bytes(images: &Tensor, cols: usize, pad: usize) -> Result<(usize, usize, Vec<u8>)> {
    let (n, c, h, w) = images.dims4()?;
    let cols = if cols == 0 { (n as f64).sqrt().ceil().max(1.0) as usize } else { cols };
    let rows = n.div_ceil(cols).max(1);
    let (gw, gh) = (cols * (w + pad) + pad, rows * (h + pad) + pad);
    let mut out = vec![0u8; gw * gh * c];
    for (i, img) in to_bytes(images)?.iter().enumerate() {
        let (r, q) = (i / cols, i % cols);
        let (y0, x0) = (pad + r * (h + pad), pad + q * (w + pad));
        for y in 0..h {
            let dst = ((y0 + y) * gw + x0) * c;
            out[dst..dst + w * c].copy_from_slice(&img[y * w * c..(y + 1) * w * c]);
        }
    }
    Ok((gw, gh, out))
}

/// Writes a grid of `images` as a PNG (grey for one channel, RGB for three).
pub fn write_grid(path: &Path, images: &Tensor, cols: usize) -> Result<()> {
    let c = images.dim(1)?;
    let (w, h, bytes) = grid_bytes(images, cols, 2)?;
    Ok(deq_train::data::write_png(path, w, h, c, &bytes)?)
}

/// Reads a PNG/JPEG as a `(1, channels, size, size)` tensor in `[-1, 1]`, converted to grey or
/// RGB and resized (Lanczos) to `size` when it differs.
pub fn read_image(path: &Path, channels: usize, size: usize, dev: &Device) -> Result<Tensor> {
    let bytes = std::fs::read(path).map_err(|e| DdimError::format(path, format!("cannot read the image: {e}")))?;
    let img = deq_train::data::decode_image(&bytes).map_err(|m| DdimError::format(path, m))?;
    let img = if img.width() as usize != size || img.height() as usize != size { img.resize_exact(size as u32, size as u32, image::imageops::FilterType::Lanczos3) } else { img };
    let planar: Vec<f32> = match channels {
        1 => img.to_luma8().into_raw().into_iter().map(|v| v as f32 / 127.5 - 1.0).collect(),
        3 => {
            let rgb = img.to_rgb8().into_raw();
            (0..3).flat_map(|ch| rgb.iter().skip(ch).step_by(3).map(|&v| v as f32 / 127.5 - 1.0).collect::<Vec<_>>()).collect()
        }
        _ => return Err(DdimError::config("model.in_channels", format!("{channels} channels: images have 1 or 3"))),
    };
    Ok(Tensor::from_vec(planar, (1, channels, size, size), dev)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_places_images_and_clamps() {
        let x = Tensor::from_vec(vec![-1f32, 1.0, 0.0, 2.0, -5.0, 0.5, 1.0, -1.0, 0.2], (1, 1, 3, 3), &Device::Cpu).unwrap();
        let b = to_bytes(&x).unwrap();
        assert_eq!(b[0], [0, 255, 128, 255, 0, 191, 255, 0, 153]);
        let three = Tensor::cat(&[&x, &x, &x], 0).unwrap();
        let (w, h, g) = grid_bytes(&three, 2, 1).unwrap();
        assert_eq!((w, h), (9, 9));
        assert_eq!(&g[(1 * 9 + 5)..(1 * 9 + 8)], &[0, 255, 128]);
        assert_eq!(&g[(5 * 9 + 1)..(5 * 9 + 4)], &[0, 255, 128]);
        assert!(g[(5 * 9 + 5)..(5 * 9 + 8)].iter().all(|&v| v == 0));
        let rgb = Tensor::from_vec(vec![-1f32, 1.0, 0.0], (1, 3, 1, 1), &Device::Cpu).unwrap();
        assert_eq!(to_bytes(&rgb).unwrap()[0], [0, 255, 128]);
    }

    #[test]
    fn images_round_trip_through_png() {
        let dir = std::env::temp_dir().join(format!("deq-ddim-grid-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let x = Tensor::from_vec((0..16).map(|i| i as f32 / 7.5 - 1.0).collect::<Vec<_>>(), (1, 1, 4, 4), &Device::Cpu).unwrap();
        write_grid(&dir.join("one.png"), &x, 1).unwrap();
        // The grid has a 2-pixel border; read back the single image through a crop-free write.
        let bytes = to_bytes(&x).unwrap().remove(0);
        deq_train::data::write_png(&dir.join("raw.png"), 4, 4, 1, &bytes).unwrap();
        let y = read_image(&dir.join("raw.png"), 1, 4, &Device::Cpu).unwrap();
        let d = (y - &x).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d < 1.0 / 127.0, "{d}");
        assert!(read_image(&dir.join("missing.png"), 1, 4, &Device::Cpu).unwrap_err().to_string().contains("missing.png"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
