//! The bilinear window shared by the correlation lookups: a point `(x, y)` (finest-level
//! pixels) divided by the level's scale has integer corner `(x0, y0)` and fractional weights
//! `(fx, fy)`; the `(2r + 1)^2` samples at whole-pixel offsets all use the same weights, so they
//! are combinations of one `(2r + 2)^2` window of integer positions starting at `(x0 - r, y0 -
//! r)`. Window entries outside the map are zero (zero padding per tap).

/// The geometry of one lookup.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geo {
    pub b: usize,
    pub h: usize,
    pub w: usize,
    pub hl: usize,
    pub wl: usize,
    pub r: usize,
    /// `1 / scale`.
    pub inv: f64,
}

/// A point's window: top-left integer corner and fractional weights.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Win {
    pub bx: i64,
    pub by: i64,
    pub fx: f64,
    pub fy: f64,
}

impl Geo {
    pub fn side(&self) -> usize {
        2 * self.r + 1
    }
    /// Window side, `2r + 2`.
    pub fn n1(&self) -> usize {
        self.side() + 1
    }
    pub fn k(&self) -> usize {
        self.side() * self.side()
    }
    pub fn hw(&self) -> usize {
        self.h * self.w
    }

    /// The window of pixel `p` of image `b` read from `coords` `(B, 2, H, W)`; `None` when a
    /// coordinate is not finite.
    pub fn window_at(&self, coords: &[f64; 2]) -> Option<Win> {
        let (sx, sy) = (coords[0] * self.inv, coords[1] * self.inv);
        if !sx.is_finite() || !sy.is_finite() {
            return None;
        }
        // Far outside every map: clamp so that the window stays representable (it samples
        // zeros either way).
        let lim = (self.hl.max(self.wl) + 4 * self.r + 8) as f64;
        let (sx, sy) = (sx.clamp(-lim, lim), sy.clamp(-lim, lim));
        let (x0, y0) = (sx.floor(), sy.floor());
        Some(Win { bx: x0 as i64 - self.r as i64, by: y0 as i64 - self.r as i64, fx: sx - x0, fy: sy - y0 })
    }

    /// The map position of window entry `(a, c)` (row, column), if inside the map.
    pub fn inside(&self, win: &Win, a: usize, c: usize) -> Option<usize> {
        let (yy, xx) = (win.by + a as i64, win.bx + c as i64);
        if yy >= 0 && yy < self.hl as i64 && xx >= 0 && xx < self.wl as i64 {
            Some(yy as usize * self.wl + xx as usize)
        } else {
            None
        }
    }

    /// The `(2r + 1)^2` samples (channel `dx * side + dy`) from window values `v` (`n1 x n1`).
    pub fn combine(&self, win: &Win, v: &[f64], out: &mut impl FnMut(usize, f64)) {
        let (side, n1) = (self.side(), self.n1());
        let (fx, fy) = (win.fx, win.fy);
        let (w00, w01, w10, w11) = ((1.0 - fx) * (1.0 - fy), fx * (1.0 - fy), (1.0 - fx) * fy, fx * fy);
        for dx in 0..side {
            for dy in 0..side {
                let s = w00 * v[dy * n1 + dx] + w01 * v[dy * n1 + dx + 1] + w10 * v[(dy + 1) * n1 + dx] + w11 * v[(dy + 1) * n1 + dx + 1];
                out(dx * side + dy, s);
            }
        }
    }

    /// The gradient of the window values from the samples' gradient `g(k)`, into `gw`.
    pub fn spread(&self, win: &Win, g: &impl Fn(usize) -> f64, gw: &mut [f64]) {
        let (side, n1) = (self.side(), self.n1());
        let (fx, fy) = (win.fx, win.fy);
        let (w00, w01, w10, w11) = ((1.0 - fx) * (1.0 - fy), fx * (1.0 - fy), (1.0 - fx) * fy, fx * fy);
        gw.fill(0.0);
        for dx in 0..side {
            for dy in 0..side {
                let gv = g(dx * side + dy);
                gw[dy * n1 + dx] += w00 * gv;
                gw[dy * n1 + dx + 1] += w01 * gv;
                gw[(dy + 1) * n1 + dx] += w10 * gv;
                gw[(dy + 1) * n1 + dx + 1] += w11 * gv;
            }
        }
    }

    /// The gradient of the point `(x, y)` (finest-level units) from the samples' gradient
    /// `g(k)` and the window values `v`: the bilinear weights' derivatives (right-sided at
    /// integer points), divided by the scale.
    pub fn point_grad(&self, win: &Win, v: &[f64], g: &impl Fn(usize) -> f64) -> [f64; 2] {
        let (side, n1) = (self.side(), self.n1());
        let (fx, fy) = (win.fx, win.fy);
        let (mut gx, mut gy) = (0.0, 0.0);
        for dx in 0..side {
            for dy in 0..side {
                let gv = g(dx * side + dy);
                let (v00, v01, v10, v11) = (v[dy * n1 + dx], v[dy * n1 + dx + 1], v[(dy + 1) * n1 + dx], v[(dy + 1) * n1 + dx + 1]);
                gx += gv * ((1.0 - fy) * (v01 - v00) + fy * (v11 - v10));
                gy += gv * ((1.0 - fx) * (v10 - v00) + fx * (v11 - v01));
            }
        }
        [gx * self.inv, gy * self.inv]
    }
}

/// Reads pixel `p`'s point from `coords` `(B, 2, H, W)` of image `b`.
pub(crate) fn point<T: deq_core::nn::KernelFloat>(coords: &[T], g: &Geo, b: usize, p: usize) -> [f64; 2] {
    let hw = g.hw();
    [coords[b * 2 * hw + p].to64(), coords[b * 2 * hw + hw + p].to64()]
}

/// The lookup's output `(B, K, H, W)`: for every pixel `n` of image `b`, `values(n, b, win, v)`
/// fills the `(2r + 2)^2` window values `v`, which are combined into the pixel's samples.
/// Pixels with a non-finite point sample zeros.
pub(crate) fn sample_all<T: deq_core::nn::KernelFloat>(g: &Geo, coords: &[T], min_len: usize, values: impl Fn(usize, usize, &Win, &mut [f64]) + Sync) -> Vec<T> {
    use rayon::prelude::*;
    let (hw, k, n1) = (g.hw(), g.k(), g.n1());
    // Per pixel first ((N, K), each pixel's values contiguous), then transposed.
    let mut rows = vec![T::default(); g.b * hw * k];
    rows.par_chunks_mut(k).enumerate().with_min_len(min_len).for_each_init(
        || vec![0f64; n1 * n1],
        |v, (n, o)| {
            let (b, p) = (n / hw, n % hw);
            let Some(win) = g.window_at(&point(coords, g, b, p)) else { return };
            values(n, b, &win, v);
            g.combine(&win, v, &mut |c, s| o[c] = T::from64(s));
        },
    );
    to_planes(&rows, g, k)
}

/// The coordinates' gradient `(B, 2, H, W)` from the samples' gradient `gy` `(B, K, H, W)`,
/// with the window values from `values` (as in [`sample_all`]).
pub(crate) fn coords_grad<T: deq_core::nn::KernelFloat>(g: &Geo, coords: &[T], gy: &[T], values: impl Fn(usize, usize, &Win, &mut [f64]) + Sync) -> Vec<T> {
    use rayon::prelude::*;
    let (hw, k, n1) = (g.hw(), g.k(), g.n1());
    let mut pairs = vec![[0f64; 2]; g.b * hw];
    pairs.par_iter_mut().enumerate().with_min_len(64).for_each_init(
        || vec![0f64; n1 * n1],
        |v, (n, d)| {
            let (b, p) = (n / hw, n % hw);
            let Some(win) = g.window_at(&point(coords, g, b, p)) else { return };
            values(n, b, &win, v);
            *d = g.point_grad(&win, v, &|c| gy[(b * k + c) * hw + p].to64());
        },
    );
    pairs_to_planes(&pairs, g)
}

/// Transposes per-pixel rows `(B * HW, K)` into `(B, K, H, W)`.
fn to_planes<T: Copy + Default + Send + Sync>(rows: &[T], g: &Geo, k: usize) -> Vec<T> {
    use rayon::prelude::*;
    let hw = g.hw();
    let mut out = vec![T::default(); g.b * k * hw];
    out.par_chunks_mut(hw).enumerate().for_each(|(bk, dst)| {
        let (b, c) = (bk / k, bk % k);
        for (p, d) in dst.iter_mut().enumerate() {
            *d = rows[(b * hw + p) * k + c];
        }
    });
    out
}

/// Splits per-pixel `(x, y)` gradient pairs `(B * HW)` into `(B, 2, H, W)`.
fn pairs_to_planes<T: deq_core::nn::KernelFloat>(pairs: &[[f64; 2]], g: &Geo) -> Vec<T> {
    let hw = g.hw();
    let mut out = vec![T::default(); g.b * 2 * hw];
    for b in 0..g.b {
        for p in 0..hw {
            out[b * 2 * hw + p] = T::from64(pairs[b * hw + p][0]);
            out[b * 2 * hw + hw + p] = T::from64(pairs[b * hw + p][1]);
        }
    }
    out
}
