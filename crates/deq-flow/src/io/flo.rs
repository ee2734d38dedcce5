//! Middlebury `.flo` files: the float32 tag 202021.25 (bytes `PIEH`), int32 width, int32
//! height, then `width * height` `(u, v)` float32 pairs, row-major, all little-endian. Values
//! of magnitude above 1e9 mark unknown flow.

use std::path::Path;

use crate::error::{FlowError, Result};
use crate::flow::Flow;

/// The tag at the start of every `.flo` file.
pub const TAG: f32 = 202021.25;
/// Largest width or height accepted (the format's fields are int32).
const MAX_SIDE: u64 = 1 << 20;

/// Reads a `.flo` file.
pub fn read(path: &Path) -> Result<Flow> {
    let bytes = std::fs::read(path).map_err(|e| FlowError::io(path, e))?;
    parse(&bytes).map_err(|m| FlowError::format(path, m))
}

/// Parses the bytes of a `.flo` file; the error says what is wrong.
pub fn parse(bytes: &[u8]) -> std::result::Result<Flow, String> {
    if bytes.len() < 12 {
        return Err(format!("truncated .flo header: {} bytes, 12 needed", bytes.len()));
    }
    let word = |i: usize| [bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]];
    let tag = f32::from_le_bytes(word(0));
    if tag != TAG {
        return Err(format!("not a .flo file: tag {tag} (expected {TAG})"));
    }
    let (w, h) = (i32::from_le_bytes(word(4)), i32::from_le_bytes(word(8)));
    if w <= 0 || h <= 0 || w as u64 > MAX_SIDE || h as u64 > MAX_SIDE {
        return Err(format!("bad .flo size {w} x {h}"));
    }
    let need = w as u64 * h as u64 * 8;
    let have = bytes.len() as u64 - 12;
    if have != need {
        return Err(format!("a {w} x {h} .flo file holds {need} bytes of flow, this one {have} (truncated or corrupt)"));
    }
    let uv = bytes[12..].chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    Ok(Flow { height: h as usize, width: w as usize, uv, valid: None })
}

/// The bytes of a `.flo` file for `flow` (its mask is not stored).
pub fn encode(flow: &Flow) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + flow.uv.len() * 4);
    out.extend_from_slice(&TAG.to_le_bytes());
    out.extend_from_slice(&(flow.width as i32).to_le_bytes());
    out.extend_from_slice(&(flow.height as i32).to_le_bytes());
    for v in &flow.uv {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Writes a `.flo` file atomically (temporary file, then rename).
pub fn write(path: &Path, flow: &Flow) -> Result<()> {
    if flow.width == 0 || flow.height == 0 || flow.width as u64 > MAX_SIDE || flow.height as u64 > MAX_SIDE || flow.uv.len() != flow.width * flow.height * 2 {
        return Err(FlowError::format(path, format!("cannot write a {} x {} flow with {} values", flow.width, flow.height, flow.uv.len())));
    }
    let bytes = encode(flow);
    deq_train::write_atomic(path, |tmp| std::fs::write(tmp, &bytes).map_err(|e| deq_train::TrainError::io(tmp, e)))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Flow {
        let uv = (0..3 * 5 * 2).map(|i| i as f32 * 0.5 - 7.0).collect();
        Flow { height: 3, width: 5, uv, valid: None }
    }

    #[test]
    fn round_trip_through_a_file() {
        let dir = std::env::temp_dir().join(format!("deq-flow-flo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.flo");
        write(&path, &sample()).unwrap();
        let back = read(&path).unwrap();
        assert_eq!(back, sample());
        // The header is the documented one.
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..4], b"PIEH");
        assert_eq!(i32::from_le_bytes(bytes[4..8].try_into().unwrap()), 5);
        assert_eq!(i32::from_le_bytes(bytes[8..12].try_into().unwrap()), 3);
        assert_eq!(f32::from_le_bytes(bytes[12..16].try_into().unwrap()), -7.0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        let good = encode(&sample());
        assert!(parse(&good[..11]).unwrap_err().contains("truncated .flo header"));
        assert!(parse(&good[..good.len() - 1]).unwrap_err().contains("truncated or corrupt"));
        let mut extra = good.clone();
        extra.push(0);
        assert!(parse(&extra).is_err());
        let mut tag = good.clone();
        tag[0] ^= 1;
        assert!(parse(&tag).unwrap_err().contains("not a .flo file"));
        // A header declaring 2^30 x 2^30 pixels is rejected before any allocation.
        let mut huge = good.clone();
        huge[4..8].copy_from_slice(&(1i32 << 30).to_le_bytes());
        huge[8..12].copy_from_slice(&(1i32 << 30).to_le_bytes());
        assert!(parse(&huge).unwrap_err().contains("bad .flo size"));
        let mut big = good.clone();
        big[4..8].copy_from_slice(&(1i32 << 20).to_le_bytes());
        assert!(parse(&big).unwrap_err().contains("truncated or corrupt"));
        let mut neg = good;
        neg[8..12].copy_from_slice(&(-3i32).to_le_bytes());
        assert!(parse(&neg).unwrap_err().contains("bad .flo size"));
        let err = read(Path::new("/nonexistent/x.flo")).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/x.flo"), "{err}");
    }
}
