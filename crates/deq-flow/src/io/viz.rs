//! Flow pictures in the Middlebury colour coding: hue from the flow's direction around a
//! 55-colour wheel (red, yellow, green, cyan, blue, magenta with 15, 6, 4, 11, 13 and 6 steps
//! between them), saturation from its magnitude relative to the largest one shown.

use crate::flow::Flow;

/// The colour wheel: 55 RGB colours in `[0, 255]`.
pub fn colour_wheel() -> Vec<[f32; 3]> {
    // Segments: (steps, start colour, end colour).
    let segs: [(usize, [f32; 3], [f32; 3]); 6] = [
        (15, [255.0, 0.0, 0.0], [255.0, 255.0, 0.0]),
        (6, [255.0, 255.0, 0.0], [0.0, 255.0, 0.0]),
        (4, [0.0, 255.0, 0.0], [0.0, 255.0, 255.0]),
        (11, [0.0, 255.0, 255.0], [0.0, 0.0, 255.0]),
        (13, [0.0, 0.0, 255.0], [255.0, 0.0, 255.0]),
        (6, [255.0, 0.0, 255.0], [255.0, 0.0, 0.0]),
    ];
    let mut wheel = Vec::with_capacity(55);
    for (n, a, b) in segs {
        for i in 0..n {
            // Integer steps like the reference: floor(255 * i / n) along the segment.
            let t = (255.0 * i as f32 / n as f32).floor() / 255.0;
            wheel.push([0, 1, 2].map(|c| a[c] + (b[c] - a[c]) * t));
        }
    }
    wheel
}

/// The colour of a flow `(u, v)` already divided by the normalising radius.
fn colour(wheel: &[[f32; 3]], u: f32, v: f32) -> [u8; 3] {
    let n = wheel.len() as f32;
    let rad = u.hypot(v);
    let a = (-v).atan2(-u) / std::f32::consts::PI;
    let fk = (a + 1.0) / 2.0 * (n - 1.0);
    let k0 = (fk.floor() as usize).min(wheel.len() - 1);
    let k1 = if k0 + 1 == wheel.len() { 0 } else { k0 + 1 };
    let f = fk - k0 as f32;
    let mut out = [0u8; 3];
    for c in 0..3 {
        let col = ((1.0 - f) * wheel[k0][c] + f * wheel[k1][c]) / 255.0;
        let col = if rad <= 1.0 { 1.0 - rad * (1.0 - col) } else { col * 0.75 };
        out[c] = (255.0 * col).floor().clamp(0.0, 255.0) as u8;
    }
    out
}

/// The picture of `flow` as `height * width * 3` RGB bytes, normalised by `max_radius` + 1e-5
/// (the largest valid magnitude when `None`); invalid pixels are black.
pub fn flow_to_rgb(flow: &Flow, max_radius: Option<f32>) -> Vec<u8> {
    let wheel = colour_wheel();
    let valid = flow.validity();
    let r = max_radius.unwrap_or_else(|| flow.max_magnitude()) + 1e-5;
    (0..flow.height * flow.width)
        .flat_map(|i| if valid[i] > 0.5 { colour(&wheel, flow.uv[2 * i] / r, flow.uv[2 * i + 1] / r) } else { [0, 0, 0] })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directions_have_the_middlebury_colours() {
        let wheel = colour_wheel();
        assert_eq!(wheel.len(), 55);
        assert_eq!(wheel[0], [255.0, 0.0, 0.0]);
        assert_eq!(wheel[15], [255.0, 255.0, 0.0]);
        assert_eq!(wheel[21], [0.0, 255.0, 0.0]);
        assert_eq!(wheel[25], [0.0, 255.0, 255.0]);
        assert_eq!(wheel[36], [0.0, 0.0, 255.0]);
        assert_eq!(wheel[49], [255.0, 0.0, 255.0]);
        // Zero flow is white.
        let c = |u, v| colour(&wheel, u, v);
        assert_eq!(c(0.0, 0.0), [255, 255, 255]);
        // Rightwards flow (u > 0) is the wheel's start, red; leftwards its middle, cyan-blue;
        // downwards (v > 0) a quarter in (position 13.5 of 54): between wheel[13] = (255, 221,
        // 0) and wheel[14] = (255, 238, 0).
        assert_eq!(c(1.0, 0.0), [255, 0, 0]);
        let left = c(-1.0, 0.0);
        assert!(left[0] == 0 && left[1] > 150 && left[2] == 255, "{left:?}");
        assert_eq!(c(0.0, 1.0), [255, 229, 0]);
        // Half the radius is half saturated; beyond the radius colours are dimmed.
        assert_eq!(c(0.5, 0.0), [255, 127, 127]);
        assert_eq!(c(2.0, 0.0), [191, 0, 0]);
        let flow = Flow { height: 1, width: 2, uv: vec![3.0, 4.0, f32::NAN, 0.0], valid: None };
        let rgb = flow_to_rgb(&flow, None);
        assert_eq!(&rgb[3..], &[0, 0, 0]);
    }
}
