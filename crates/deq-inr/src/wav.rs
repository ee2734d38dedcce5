//! WAV (RIFF/WAVE) audio: reads PCM (8, 16, 24, 32-bit integer; format tag 1) and IEEE float
//! (32, 64-bit; tag 3), also inside `WAVE_FORMAT_EXTENSIBLE`, skipping other chunks (`fact`,
//! `LIST`, ...); channels are averaged to mono. Writes 32-bit float or 16-bit PCM mono.

use crate::error::{InrError, Result};
use std::path::Path;

/// A mono waveform.
#[derive(Debug, Clone, PartialEq)]
pub struct Audio {
    /// Samples per second.
    pub rate: u32,
    /// Samples (integer formats scaled to `[-1, 1)`).
    pub samples: Vec<f32>,
}

fn u16le(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}

fn u32le(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

impl Audio {
    /// Reads a WAV file; errors name the file and say what is unsupported or truncated.
    pub fn read(path: &Path) -> Result<Self> {
        let b = std::fs::read(path).map_err(|e| InrError::io(path, e))?;
        Self::parse(&b).map_err(|m| InrError::format(path, m))
    }

    /// Parses the bytes of a WAV file ([`Audio::read`] without the file: the error is the bare
    /// message). Never panics; allocates only for the samples present.
    pub fn parse(b: &[u8]) -> std::result::Result<Self, String> {
        if b.len() < 12 || &b[0..4] != b"RIFF" || &b[8..12] != b"WAVE" {
            return Err("not a RIFF/WAVE file".into());
        }
        let mut pos = 12;
        let mut fmt: Option<(u16, u16, u32, u16)> = None;
        while pos + 8 <= b.len() {
            let id = &b[pos..pos + 4];
            let size = u32le(b, pos + 4) as usize;
            let body = pos + 8;
            if id == b"fmt " {
                if size < 16 || body + 16 > b.len() {
                    return Err("truncated fmt chunk".into());
                }
                let mut tag = u16le(b, body);
                let channels = u16le(b, body + 2);
                let rate = u32le(b, body + 4);
                let bits = u16le(b, body + 14);
                if tag == 0xFFFE {
                    if size < 40 || body + 26 > b.len() {
                        return Err("truncated WAVE_FORMAT_EXTENSIBLE fmt chunk".into());
                    }
                    tag = u16le(b, body + 24); // first two bytes of the sub-format GUID
                }
                fmt = Some((tag, channels, rate, bits));
            } else if id == b"data" {
                let (tag, channels, rate, bits) = fmt.ok_or("data chunk before fmt chunk")?;
                if channels == 0 || rate == 0 {
                    return Err(format!("{channels} channels at {rate} Hz"));
                }
                let end = body + size;
                if end > b.len() {
                    return Err(format!("truncated data chunk: header says {size} bytes, {} present", b.len() - body));
                }
                let data = &b[body..end];
                let bytes = (bits as usize).div_ceil(8);
                let decode: Box<dyn Fn(&[u8]) -> f32> = match (tag, bits) {
                    (1, 8) => Box::new(|s| (s[0] as f32 - 128.0) / 128.0),
                    (1, 16) => Box::new(|s| i16::from_le_bytes([s[0], s[1]]) as f32 / 32768.0),
                    (1, 24) => Box::new(|s| ((i32::from_le_bytes([0, s[0], s[1], s[2]]) >> 8) as f32) / 8_388_608.0),
                    (1, 32) => Box::new(|s| i32::from_le_bytes([s[0], s[1], s[2], s[3]]) as f32 / 2_147_483_648.0),
                    (3, 32) => Box::new(|s| f32::from_le_bytes([s[0], s[1], s[2], s[3]])),
                    (3, 64) => Box::new(|s| f64::from_le_bytes([s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]]) as f32),
                    _ => return Err(format!("unsupported sample format (tag {tag}, {bits} bits): PCM 8/16/24/32 or float 32/64 only")),
                };
                let frame = bytes * channels as usize;
                let samples = data
                    .chunks_exact(frame)
                    .map(|f| f.chunks_exact(bytes).map(&decode).sum::<f32>() / channels as f32)
                    .collect::<Vec<f32>>();
                if samples.is_empty() {
                    return Err("the data chunk holds no complete sample".into());
                }
                if samples.iter().any(|v| !v.is_finite()) {
                    return Err("samples contain NaN or infinity".into());
                }
                return Ok(Self { rate, samples });
            }
            pos = body + size + (size & 1);
        }
        Err(if fmt.is_none() { "no fmt chunk".into() } else { "no data chunk".into() })
    }

    /// Writes mono 32-bit float (`float = true`, format tag 3) or 16-bit PCM, atomically.
    pub fn write(&self, path: &Path, float: bool) -> Result<()> {
        let (tag, bits): (u16, u16) = if float { (3, 32) } else { (1, 16) };
        let bytes_per = (bits / 8) as u32;
        let data_len = self.samples.len() as u32 * bytes_per;
        let mut b = Vec::with_capacity(44 + data_len as usize);
        b.extend_from_slice(b"RIFF");
        b.extend_from_slice(&(36 + data_len).to_le_bytes());
        b.extend_from_slice(b"WAVEfmt ");
        b.extend_from_slice(&16u32.to_le_bytes());
        b.extend_from_slice(&tag.to_le_bytes());
        b.extend_from_slice(&1u16.to_le_bytes());
        b.extend_from_slice(&self.rate.to_le_bytes());
        b.extend_from_slice(&(self.rate * bytes_per).to_le_bytes());
        b.extend_from_slice(&(bytes_per as u16).to_le_bytes());
        b.extend_from_slice(&bits.to_le_bytes());
        b.extend_from_slice(b"data");
        b.extend_from_slice(&data_len.to_le_bytes());
        for &s in &self.samples {
            if float {
                b.extend_from_slice(&s.to_le_bytes());
            } else {
                b.extend_from_slice(&((s.clamp(-1.0, 1.0) * 32767.0).round() as i16).to_le_bytes());
            }
        }
        let tmp = path.with_extension("wav.tmp");
        std::fs::write(&tmp, &b).map_err(|e| InrError::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| InrError::io(path, e))
    }
}
