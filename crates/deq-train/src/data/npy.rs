//! Reader and writer of NumPy `.npy` files (format versions 1, 2 and 3), as written by
//! `numpy.save`: numeric arrays of any rank, little- or big-endian, C or Fortran order.
//! Values are returned as `f32` in C (row-major) order.

use crate::error::{Result, TrainError};
use std::path::Path;

/// A dense array read from a `.npy` file.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    /// The shape (empty for a scalar).
    pub shape: Vec<usize>,
    /// The values in row-major order.
    pub data: Vec<f32>,
}

const MAGIC: &[u8] = b"\x93NUMPY";

/// The value of `key` in the header dictionary (`{'descr': '<f4', 'fortran_order': False,
/// 'shape': (3, 4), }`), as the raw text up to the next top-level comma.
fn header_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("'{key}'");
    let start = header.find(&pat)? + pat.len();
    let rest = header[start..].trim_start().strip_prefix(':')?.trim_start();
    let mut depth = 0i32;
    for (i, c) in rest.char_indices() {
        match c {
            '(' | '[' => depth += 1,
            ')' | ']' => depth -= 1,
            ',' | '}' if depth == 0 => return Some(rest[..i].trim()),
            _ => {}
        }
        if depth == 0 && c == ')' {
            return Some(rest[..=i].trim());
        }
    }
    None
}

/// Reads a `.npy` file. Errors name the file: missing file, bad magic, unsupported dtype
/// (structured, object, complex, strings), truncated data.
///
/// Allocation is bounded by the file: the element count the header declares is checked
/// (without overflow) against the bytes that follow the header before anything is allocated.
pub fn read_npy(path: &Path) -> Result<NpyArray> {
    let bytes = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
    parse_npy(&bytes).map_err(|m| TrainError::format(path, m))
}

/// Parses the bytes of a `.npy` file ([`read_npy`] without the file: the error is the bare
/// message). Never panics; allocates only after the declared size has been checked against
/// `bytes.len()`.
pub fn parse_npy(bytes: &[u8]) -> std::result::Result<NpyArray, String> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err("not a .npy file (bad magic)".into());
    }
    let major = bytes[6];
    let (hlen, off) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10usize),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err("truncated header".into());
            }
            (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12)
        }
        v => return Err(format!("unsupported .npy format version {v}")),
    };
    let header = bytes.get(off..(off as usize).saturating_add(hlen)).ok_or("truncated header")?;
    let header = std::str::from_utf8(header).map_err(|_| "header is not text")?;
    let descr = header_value(header, "descr").ok_or("header has no 'descr'")?.trim_matches(|c| c == '\'' || c == '"');
    let fortran = header_value(header, "fortran_order").ok_or("header has no 'fortran_order'")? == "True";
    let shape_txt = header_value(header, "shape").ok_or("header has no 'shape'")?;
    let shape: Vec<usize> = shape_txt
        .trim_matches(|c| c == '(' || c == ')')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_end_matches('L').parse::<usize>().map_err(|_| format!("bad shape {shape_txt}")))
        .collect::<std::result::Result<_, _>>()?;
    let bad_dtype = || format!("unsupported dtype '{descr}' (numeric arrays only)");
    let mut chars = descr.chars();
    let big = match chars.next() {
        Some('<' | '|' | '=') => false,
        Some('>') => true,
        _ => return Err(bad_dtype()),
    };
    let kind = chars.as_str();
    let code = kind.bytes().next().ok_or_else(bad_dtype)?;
    let size: usize = kind.get(1..).and_then(|s| s.parse().ok()).ok_or_else(bad_dtype)?;
    if !matches!((code, size), (b'f', 2 | 4 | 8) | (b'i' | b'u', 1 | 2 | 4 | 8) | (b'b', 1)) {
        return Err(bad_dtype());
    }
    let count = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    let need = count.and_then(|c| c.checked_mul(size));
    let data = &bytes[off + hlen..];
    let (count, need) = match (count, need) {
        (Some(c), Some(n)) if n <= data.len() => (c, n),
        _ => {
            let need = need.map_or_else(|| "more than 2^64".to_string(), |n| n.to_string());
            return Err(format!("truncated data: shape {shape:?} of '{descr}' needs {need} bytes, the file has {}", data.len()));
        }
    };
    let data = &data[..need];
    let word = |i: usize| -> [u8; 8] {
        let mut w = [0u8; 8];
        let src = &data[i * size..(i + 1) * size];
        if big {
            for (k, b) in src.iter().rev().enumerate() {
                w[k] = *b;
            }
        } else {
            w[..size].copy_from_slice(src);
        }
        w
    };
    let conv: Box<dyn Fn(usize) -> f32> = match (code, size) {
        (b'f', 4) => Box::new(|i| f32::from_le_bytes(word(i)[..4].try_into().unwrap())),
        (b'f', 8) => Box::new(|i| f64::from_le_bytes(word(i)) as f32),
        (b'f', 2) => Box::new(|i| half_to_f32(u16::from_le_bytes(word(i)[..2].try_into().unwrap()))),
        (b'i', 1) => Box::new(|i| word(i)[0] as i8 as f32),
        (b'i', 2) => Box::new(|i| i16::from_le_bytes(word(i)[..2].try_into().unwrap()) as f32),
        (b'i', 4) => Box::new(|i| i32::from_le_bytes(word(i)[..4].try_into().unwrap()) as f32),
        (b'i', 8) => Box::new(|i| i64::from_le_bytes(word(i)) as f32),
        (b'u', 1) | (b'b', 1) => Box::new(|i| word(i)[0] as f32),
        (b'u', 2) => Box::new(|i| u16::from_le_bytes(word(i)[..2].try_into().unwrap()) as f32),
        (b'u', 4) => Box::new(|i| u32::from_le_bytes(word(i)[..4].try_into().unwrap()) as f32),
        (b'u', 8) => Box::new(|i| u64::from_le_bytes(word(i)) as f32),
        _ => return Err(bad_dtype()),
    };
    let mut out = vec![0f32; count];
    if fortran && shape.len() > 1 && count > 0 {
        // count > 0: every partial product below is at most count, so none overflows.
        // Element at C index (i0..ik) lives at Fortran offset sum i_j * prod_{l<j} n_l.
        let mut fstride = vec![1usize; shape.len()];
        for j in 1..shape.len() {
            fstride[j] = fstride[j - 1] * shape[j - 1];
        }
        let mut idx = vec![0usize; shape.len()];
        for o in out.iter_mut() {
            *o = conv(idx.iter().zip(&fstride).map(|(i, s)| i * s).sum());
            for j in (0..shape.len()).rev() {
                idx[j] += 1;
                if idx[j] < shape[j] {
                    break;
                }
                idx[j] = 0;
            }
        }
    } else {
        for (i, o) in out.iter_mut().enumerate() {
            *o = conv(i);
        }
    }
    Ok(NpyArray { shape, data: out })
}

fn half_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as i32;
    let mant = (h & 0x3ff) as u32;
    let bits = match exp {
        0 if mant == 0 => sign,
        0 => return f32::from_bits(sign) + (if sign != 0 { -1.0 } else { 1.0 }) * mant as f32 * 2f32.powi(-24),
        31 => sign | 0x7f80_0000 | (mant << 13),
        e => sign | (((e - 15 + 127) as u32) << 23) | (mant << 13),
    };
    f32::from_bits(bits)
}

/// Writes a little-endian `f32` C-order `.npy` file (format version 1.0), atomically.
pub fn write_npy_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    if shape.iter().product::<usize>() != data.len() {
        return Err(TrainError::format(path, format!("shape {shape:?} does not match {} values", data.len())));
    }
    let dims = match shape.len() {
        1 => format!("({},)", shape[0]),
        _ => format!("({})", shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {dims}, }}");
    // Pad so that the data starts on a 64-byte boundary, ending with a newline.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = Vec::with_capacity(10 + header.len() + data.len() * 4);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&[1, 0]);
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for v in data {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    let tmp = path.with_extension("npy.tmp");
    std::fs::write(&tmp, &bytes).map_err(|e| TrainError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| TrainError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let dir = std::env::temp_dir().join(format!("deq-npy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("a.npy");
        write_npy_f32(&p, &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.5]).unwrap();
        let a = read_npy(&p).unwrap();
        assert_eq!(a.shape, vec![2, 3]);
        assert_eq!(a.data, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.5]);
        // Fortran order, f8, big-endian, hand-built: [[1, 2], [3, 4]] stored column-major.
        let mut h = "{'descr': '>f8', 'fortran_order': True, 'shape': (2, 2), }".to_string();
        while (10 + h.len() + 1) % 64 != 0 {
            h.push(' ');
        }
        h.push('\n');
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&[1, 0]);
        b.extend_from_slice(&(h.len() as u16).to_le_bytes());
        b.extend_from_slice(h.as_bytes());
        for v in [1.0f64, 3.0, 2.0, 4.0] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        assert_eq!(parse_npy(&b).unwrap().data, vec![1.0, 2.0, 3.0, 4.0]);
        // Truncated data and bad magic name the file.
        let full = std::fs::read(&p).unwrap();
        std::fs::write(&p, &full[..full.len() - 3]).unwrap();
        let e = read_npy(&p).unwrap_err().to_string();
        assert!(e.contains("a.npy") && e.contains("truncated"), "{e}");
        std::fs::write(&p, b"hello world, not numpy").unwrap();
        assert!(read_npy(&p).unwrap_err().to_string().contains("bad magic"));
        assert!(read_npy(&dir.join("missing.npy")).unwrap_err().to_string().contains("missing.npy"));
        assert_eq!(half_to_f32(0x3c00), 1.0);
        assert_eq!(half_to_f32(0xc000), -2.0);
    }
}
