//! The one size-limited image decoder every image reader of the workspace uses (PNG, JPEG
//! and the other formats the `image` crate is built with here).
//!
//! Bounded allocation: a header declaring more than [`MAX_SIDE`] pixels on a side, or a
//! decode needing more than [`MAX_DECODE_BYTES`], is refused before pixels are allocated,
//! and so is a decoded size that, at 4 `f32` per pixel (the widest conversion the readers
//! make), would not fit in the memory available.

/// Largest width or height decoded.
pub const MAX_SIDE: u32 = 16384;
/// Largest allocation the decoder itself may make.
pub const MAX_DECODE_BYTES: u64 = 1 << 30;

fn limits() -> image::Limits {
    let mut l = image::Limits::default();
    l.max_image_width = Some(MAX_SIDE);
    l.max_image_height = Some(MAX_SIDE);
    l.max_alloc = Some(MAX_DECODE_BYTES);
    l
}

/// Decodes the bytes of an image file (format guessed from its content) under the limits
/// above. Errors are bare messages (callers add the file); an image without pixels is an
/// error.
pub fn decode_image(bytes: &[u8]) -> Result<image::DynamicImage, String> {
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format().map_err(|e| format!("cannot read the image: {e}"))?;
    reader.limits(limits());
    let (w, h) = reader.into_dimensions().map_err(|e| format!("cannot decode image: {e}"))?;
    if w == 0 || h == 0 {
        return Err("image has no pixels".into());
    }
    if w > MAX_SIDE || h > MAX_SIDE {
        return Err(format!("image of {w}x{h} pixels: a side above {MAX_SIDE} is refused"));
    }
    crate::data::alloc::check_fits(w as usize * h as usize * 16, "decoded image")?;
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format().map_err(|e| format!("cannot read the image: {e}"))?;
    reader.limits(limits());
    reader.decode().map_err(|e| format!("cannot decode image: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let mut out = Vec::new();
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 7]));
        img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png).unwrap();
        out
    }

    #[test]
    fn decodes_and_refuses_absurd_headers() {
        let img = decode_image(&png(5, 3)).unwrap();
        assert_eq!((img.width(), img.height()), (5, 3));
        // The IHDR width patched to 2^31 - 1: refused from the header (CRC fixed up so the
        // decoder reads the header rather than failing its checksum).
        let b = crate::hostile::png_with_size(&png(5, 3), 0x7fff_ffff, 3);
        let e = decode_image(&b).unwrap_err();
        assert!(e.contains("refused") || e.contains("limit"), "{e}");
        assert!(decode_image(b"not an image at all").is_err());
        assert!(decode_image(&[]).is_err());
    }
}
