//! The zoo's batching: the token stream cut into `batch` equal columns (the remainder
//! dropped), read in segments of `tgt_len` positions with the targets one position ahead; the
//! last segment of an epoch may be shorter. A data-parallel rank reads a slice of the columns.

use crate::error::{LmError, Result};
use candle_core::{Device, Tensor};

/// The stream `ids` as `batch` columns: `(batch, len / batch)` row-major, column `b` holding
/// the `b`-th contiguous piece.
pub fn batchify(ids: &[u32], batch: usize) -> Result<(Vec<u32>, usize)> {
    if batch == 0 || ids.len() < 2 * batch {
        return Err(LmError::Data { path: "<token stream>".into(), message: format!("{} tokens cannot fill {batch} columns of at least 2", ids.len()) });
    }
    let per = ids.len() / batch;
    Ok((ids[..per * batch].to_vec(), per))
}

/// Segments of `(inputs, targets)`, each `(columns, len)` u32, over a batchified stream.
#[derive(Debug, Clone)]
pub struct Segments {
    data: Vec<u32>,
    batch: usize,
    per: usize,
    tgt_len: usize,
    cols: std::ops::Range<usize>,
}

impl Segments {
    /// Segments of `tgt_len` over the columns `cols` of a stream batchified into `batch`
    /// columns (all of them: `0..batch`; rank `r` of `w`: its slice of `batch / w`).
    pub fn new(ids: &[u32], batch: usize, tgt_len: usize, cols: std::ops::Range<usize>) -> Result<Self> {
        let (data, per) = batchify(ids, batch)?;
        if tgt_len == 0 || cols.is_empty() || cols.end > batch {
            return Err(LmError::Data { path: "<token stream>".into(), message: format!("segments of {tgt_len} over columns {cols:?} of {batch}") });
        }
        Ok(Self { data, batch, per, tgt_len, cols })
    }

    /// The columns of rank `rank` in a world of `world` (equal slices; `batch` must divide).
    pub fn rank_columns(batch: usize, rank: usize, world: usize) -> Result<std::ops::Range<usize>> {
        if world == 0 || batch % world != 0 || rank >= world {
            return Err(LmError::Data { path: "<token stream>".into(), message: format!("{batch} columns cannot be split over {world} ranks equally") });
        }
        let n = batch / world;
        Ok(rank * n..(rank + 1) * n)
    }

    /// Number of segments.
    pub fn len(&self) -> usize {
        (self.per - 1).div_ceil(self.tgt_len)
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Segment `k`: inputs and targets `(columns, len)` on `dev`.
    pub fn get(&self, k: usize, dev: &Device) -> Result<(Tensor, Tensor)> {
        let start = k * self.tgt_len;
        if start + 1 >= self.per {
            return Err(LmError::Data { path: "<token stream>".into(), message: format!("segment {k} of {}", self.len()) });
        }
        let len = self.tgt_len.min(self.per - 1 - start);
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for c in self.cols.clone() {
            let col = &self.data[c * self.per..(c + 1) * self.per];
            x.extend_from_slice(&col[start..start + len]);
            y.extend_from_slice(&col[start + 1..start + 1 + len]);
        }
        let n = self.cols.len();
        Ok((Tensor::from_vec(x, (n, len), dev)?, Tensor::from_vec(y, (n, len), dev)?))
    }

    /// Columns of the whole stream.
    pub fn batch(&self) -> usize {
        self.batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_segments_and_rank_slices() {
        let ids: Vec<u32> = (0..23).collect();
        // 3 columns of 7 (two tokens dropped): 0..7, 7..14, 14..21.
        let s = Segments::new(&ids, 3, 4, 0..3).unwrap();
        assert_eq!(s.len(), 2, "6 target positions per column in segments of 4");
        let (x, y) = s.get(0, &Device::Cpu).unwrap();
        assert_eq!(x.to_vec2::<u32>().unwrap(), [[0, 1, 2, 3], [7, 8, 9, 10], [14, 15, 16, 17]]);
        assert_eq!(y.to_vec2::<u32>().unwrap(), [[1, 2, 3, 4], [8, 9, 10, 11], [15, 16, 17, 18]]);
        let (x, y) = s.get(1, &Device::Cpu).unwrap();
        assert_eq!((x.to_vec2::<u32>().unwrap()[2].clone(), y.to_vec2::<u32>().unwrap()[2].clone()), (vec![18, 19], vec![19, 20]));
        assert!(s.get(2, &Device::Cpu).is_err());
        // Two ranks of a 4-column stream read columns 0-1 and 2-3: together the whole batch.
        let ids: Vec<u32> = (0..40).collect();
        let all = Segments::new(&ids, 4, 5, 0..4).unwrap().get(0, &Device::Cpu).unwrap().0.to_vec2::<u32>().unwrap();
        let mut parts = Vec::new();
        for r in 0..2 {
            let cols = Segments::rank_columns(4, r, 2).unwrap();
            parts.extend(Segments::new(&ids, 4, 5, cols).unwrap().get(0, &Device::Cpu).unwrap().0.to_vec2::<u32>().unwrap());
        }
        assert_eq!(parts, all);
        assert!(Segments::rank_columns(4, 0, 3).is_err());
        assert!(batchify(&[1, 2, 3], 2).is_err());
        // The smallest streams: two tokens per column pass, fewer fail.
        assert_eq!(batchify(&[1, 2, 3, 4], 2).unwrap(), (vec![1, 2, 3, 4], 2));
        assert!(batchify(&[1, 2, 3, 4, 5], 3).is_err());
        // 9 per column, segments of 4: targets 1..9 in two segments; the third would start at
        // the last token, which has no target.
        let s = Segments::new(&(0..18).collect::<Vec<u32>>(), 2, 4, 0..2).unwrap();
        assert_eq!((s.len(), s.is_empty(), s.batch()), (2, false, 2));
        assert_eq!(s.get(1, &Device::Cpu).unwrap().0.dims(), &[2, 4]);
        assert!(s.get(2, &Device::Cpu).is_err());
    }
}
