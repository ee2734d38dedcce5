//! Portable Float Map files (FlyingThings3D's flow and disparity): a text header `PF` (3
//! channels) or `Pf` (1 channel), the width and height, and a scale whose sign gives the byte
//! order (negative: little-endian), each followed by whitespace (one byte after the scale); then
//! float32 rows from the bottom of the image to the top.

use std::path::Path;

use crate::error::{FlowError, Result};
use crate::flow::Flow;

/// Largest width or height accepted.
const MAX_SIDE: u64 = 1 << 20;
/// Longest header accepted (a real one is ~20 bytes).
const MAX_HEADER: usize = 256;

/// A float image: `height * width * channels` values, top row first, channels interleaved.
#[derive(Debug, Clone, PartialEq)]
pub struct FloatImage {
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
    /// 1 or 3.
    pub channels: usize,
    /// The values, row-major from the top.
    pub data: Vec<f32>,
}

/// Reads a PFM file.
pub fn read(path: &Path) -> Result<FloatImage> {
    let bytes = std::fs::read(path).map_err(|e| FlowError::io(path, e))?;
    parse(&bytes).map_err(|m| FlowError::format(path, m))
}

/// Reads a PFM flow file: the first two channels of a 3-channel map.
pub fn read_flow(path: &Path) -> Result<Flow> {
    let img = read(path)?;
    if img.channels != 3 {
        return Err(FlowError::format(path, format!("a PFM flow file has 3 channels, this one {}", img.channels)));
    }
    let uv = img.data.chunks_exact(3).flat_map(|p| [p[0], p[1]]).collect();
    Ok(Flow { height: img.height, width: img.width, uv, valid: None })
}

/// Splits the next whitespace-delimited token off `bytes[*pos..]`.
fn token<'a>(bytes: &'a [u8], pos: &mut usize) -> std::result::Result<&'a str, String> {
    while *pos < bytes.len() && bytes[*pos].is_ascii_whitespace() {
        *pos += 1;
    }
    let start = *pos;
    while *pos < bytes.len() && !bytes[*pos].is_ascii_whitespace() {
        if *pos - start > 32 || *pos >= MAX_HEADER {
            return Err("PFM header too long".into());
        }
        *pos += 1;
    }
    if start == *pos {
        return Err("truncated PFM header".into());
    }
    std::str::from_utf8(&bytes[start..*pos]).map_err(|_| "PFM header is not ASCII".to_string())
}

/// Parses the bytes of a PFM file; the error says what is wrong.
pub fn parse(bytes: &[u8]) -> std::result::Result<FloatImage, String> {
    let mut pos = 0;
    let channels = match token(bytes, &mut pos)? {
        "PF" => 3,
        "Pf" => 1,
        other => return Err(format!("not a PFM file: header {other:?} (expected PF or Pf)")),
    };
    let side = |t: &str, what: &str| -> std::result::Result<u64, String> {
        let v: u64 = t.parse().map_err(|_| format!("bad PFM {what} {t:?}"))?;
        if v == 0 || v > MAX_SIDE {
            return Err(format!("bad PFM {what} {v}"));
        }
        Ok(v)
    };
    let width = side(token(bytes, &mut pos)?, "width")?;
    let height = side(token(bytes, &mut pos)?, "height")?;
    let scale: f32 = {
        let t = token(bytes, &mut pos)?;
        t.parse().map_err(|_| format!("bad PFM scale {t:?}"))?
    };
    if !scale.is_finite() || scale == 0.0 {
        return Err(format!("bad PFM scale {scale}"));
    }
    // Exactly one whitespace byte separates the header from the data.
    if pos >= bytes.len() || !bytes[pos].is_ascii_whitespace() {
        return Err("truncated PFM header".into());
    }
    pos += 1;
    let row = width * channels as u64;
    let need = row * height * 4;
    let have = (bytes.len() - pos) as u64;
    if have != need {
        return Err(format!("a {width} x {height} x {channels} PFM file holds {need} bytes of data, this one {have} (truncated or corrupt)"));
    }
    let little = scale < 0.0;
    let (w, h, row) = (width as usize, height as usize, row as usize);
    let mut data = vec![0f32; row * h];
    for (y, src) in bytes[pos..].chunks_exact(row * 4).enumerate() {
        // Stored bottom row first.
        let dst = &mut data[(h - 1 - y) * row..][..row];
        for (d, c) in dst.iter_mut().zip(src.chunks_exact(4)) {
            let b = [c[0], c[1], c[2], c[3]];
            *d = if little { f32::from_le_bytes(b) } else { f32::from_be_bytes(b) };
        }
    }
    Ok(FloatImage { height: h, width: w, channels, data })
}

/// The bytes of a little-endian PFM file for `img` (used by tests and tools).
pub fn encode(img: &FloatImage) -> Vec<u8> {
    let tag = if img.channels == 3 { "PF" } else { "Pf" };
    let mut out = format!("{tag}\n{} {}\n-1.0\n", img.width, img.height).into_bytes();
    let row = img.width * img.channels;
    for y in (0..img.height).rev() {
        for v in &img.data[y * row..][..row] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(channels: usize) -> FloatImage {
        let (height, width) = (4, 3);
        FloatImage { height, width, channels, data: (0..height * width * channels).map(|i| i as f32 - 5.5).collect() }
    }

    #[test]
    fn round_trips_and_row_order() {
        for c in [1, 3] {
            let img = sample(c);
            let bytes = encode(&img);
            assert_eq!(parse(&bytes).unwrap(), img);
            // The first stored row is the image's bottom row.
            let start = bytes.len() - img.data.len() * 4;
            let first = f32::from_le_bytes(bytes[start..start + 4].try_into().unwrap());
            assert_eq!(first, img.data[(img.height - 1) * img.width * c]);
        }
    }

    #[test]
    fn big_endian_files_with_a_positive_scale() {
        let img = sample(3);
        let mut bytes = b"PF\n3 4\n1.0\n".to_vec();
        for y in (0..4).rev() {
            for v in &img.data[y * 9..][..9] {
                bytes.extend_from_slice(&v.to_be_bytes());
            }
        }
        assert_eq!(parse(&bytes).unwrap(), img);
    }

    #[test]
    fn flow_takes_the_first_two_channels() {
        let dir = std::env::temp_dir().join(format!("deq-flow-pfm-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f.pfm");
        std::fs::write(&path, encode(&sample(3))).unwrap();
        let flow = read_flow(&path).unwrap();
        assert_eq!((flow.height, flow.width), (4, 3));
        assert_eq!(flow.at(0, 1), (-2.5, -1.5));
        assert_eq!(flow.at(3, 2), (27.5, 28.5));
        std::fs::write(&path, encode(&sample(1))).unwrap();
        let err = read_flow(&path).unwrap_err().to_string();
        assert!(err.contains("f.pfm") && err.contains("3 channels"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_headers_and_sizes() {
        let good = encode(&sample(3));
        assert!(parse(b"P6\n3 4\n-1\n").unwrap_err().contains("not a PFM"));
        assert!(parse(b"PF\n3").unwrap_err().contains("truncated"));
        assert!(parse(b"PF\nx 4\n-1\n").unwrap_err().contains("width"));
        assert!(parse(b"PF\n3 0\n-1\n").unwrap_err().contains("height"));
        assert!(parse(b"PF\n3 4\nnan\n").unwrap_err().contains("scale"));
        assert!(parse(&good[..good.len() - 2]).unwrap_err().contains("truncated or corrupt"));
        // 2^20 x 2^20 declared: rejected against the file size, nothing allocated.
        let mut huge = b"PF\n1048576 1048576\n-1.0\n".to_vec();
        huge.extend_from_slice(&[0; 64]);
        assert!(parse(&huge).unwrap_err().contains("truncated or corrupt"));
        assert!(parse(b"PF\n99999999999 4\n-1\n").unwrap_err().contains("width"));
        let long = format!("PF\n{} 4\n-1\n", "1".repeat(300));
        assert!(parse(long.as_bytes()).is_err());
    }
}
