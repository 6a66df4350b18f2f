//! RandAugment (Cubuk et al., 2020) as torchvision's `RandAugment` defines it: `num_ops`
//! operations drawn uniformly from 14, each at magnitude `m` of 31 bins, geometric ones
//! filled with black, signed magnitudes negated half the time.

use ndarray::Array3;
use rand::Rng;

const BINS: f64 = 31.0;

/// The 14 operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Nothing.
    Identity,
    /// Shear along x by up to 0.3.
    ShearX,
    /// Shear along y by up to 0.3.
    ShearY,
    /// Translate along x by up to 150/331 of the width.
    TranslateX,
    /// Translate along y by up to 150/331 of the height.
    TranslateY,
    /// Rotate by up to 30 degrees.
    Rotate,
    /// Brightness factor 1 +- 0.9.
    Brightness,
    /// Saturation factor 1 +- 0.9.
    Color,
    /// Contrast factor 1 +- 0.9.
    Contrast,
    /// Sharpness factor 1 +- 0.9.
    Sharpness,
    /// Keep 8 down to 4 bits.
    Posterize,
    /// Invert pixels above a threshold from 255 down to 0.
    Solarize,
    /// Stretch each channel to 0..255.
    AutoContrast,
    /// Histogram equalization per channel.
    Equalize,
}

/// Every operation, in torchvision's order.
pub const OPS: [Op; 14] = [
    Op::Identity,
    Op::ShearX,
    Op::ShearY,
    Op::TranslateX,
    Op::TranslateY,
    Op::Rotate,
    Op::Brightness,
    Op::Color,
    Op::Contrast,
    Op::Sharpness,
    Op::Posterize,
    Op::Solarize,
    Op::AutoContrast,
    Op::Equalize,
];

/// `num_ops` random operations at magnitude `magnitude` (0..=30).
#[derive(Debug, Clone, Copy)]
pub struct RandAugment {
    num_ops: usize,
    magnitude: u32,
}

impl RandAugment {
    /// torchvision's defaults are `new(2, 9)`.
    pub fn new(num_ops: usize, magnitude: u32) -> Self {
        Self {
            num_ops,
            magnitude: magnitude.min(30),
        }
    }

    /// Apply to an image `[height, width, channels]`.
    pub fn apply(&self, image: &mut Array3<u8>, rng: &mut impl Rng) {
        for _ in 0..self.num_ops {
            let op = OPS[rng.random_range(0..OPS.len())];
            let sign = if rng.random::<bool>() { -1.0 } else { 1.0 };
            apply_op(image, op, self.magnitude, sign);
        }
    }
}

fn linspace(hi: f64, magnitude: u32) -> f64 {
    hi * f64::from(magnitude) / (BINS - 1.0)
}

/// Apply one operation at `magnitude` with the sign of signed magnitudes.
pub fn apply_op(image: &mut Array3<u8>, op: Op, magnitude: u32, sign: f64) {
    let (h, w, _) = image.dim();
    match op {
        Op::Identity => {}
        Op::ShearX => affine(
            image,
            [1.0, sign * linspace(0.3, magnitude), 0.0, 0.0, 1.0, 0.0],
        ),
        Op::ShearY => affine(
            image,
            [1.0, 0.0, 0.0, sign * linspace(0.3, magnitude), 1.0, 0.0],
        ),
        Op::TranslateX => {
            let t = (sign * linspace(150.0 / 331.0 * w as f64, magnitude)).trunc();
            affine(image, [1.0, 0.0, -t, 0.0, 1.0, 0.0])
        }
        Op::TranslateY => {
            let t = (sign * linspace(150.0 / 331.0 * h as f64, magnitude)).trunc();
            affine(image, [1.0, 0.0, 0.0, 0.0, 1.0, -t])
        }
        Op::Rotate => {
            let a = (sign * linspace(30.0, magnitude)).to_radians();
            let (s, c) = a.sin_cos();
            let (cx, cy) = ((w as f64 - 1.0) * 0.5, (h as f64 - 1.0) * 0.5);
            // Inverse map: output pixel -> source pixel, rotation about the center.
            affine(
                image,
                [c, -s, cx - c * cx + s * cy, s, c, cy - s * cx - c * cy],
            )
        }
        Op::Brightness => {
            let f = 1.0 + sign * linspace(0.9, magnitude);
            image.mapv_inplace(|v| blend(0.0, f64::from(v), f));
        }
        Op::Color => {
            let f = 1.0 + sign * linspace(0.9, magnitude);
            if image.dim().2 == 3 {
                for mut px in image.lanes_mut(ndarray::Axis(2)) {
                    let g = gray(px[0], px[1], px[2]);
                    for v in px.iter_mut() {
                        *v = blend(g, f64::from(*v), f);
                    }
                }
            }
        }
        Op::Contrast => {
            let f = 1.0 + sign * linspace(0.9, magnitude);
            let mean = if image.dim().2 == 3 {
                image
                    .lanes(ndarray::Axis(2))
                    .into_iter()
                    .map(|p| gray(p[0], p[1], p[2]))
                    .sum::<f64>()
                    / (h * w) as f64
            } else {
                image.iter().map(|v| f64::from(*v)).sum::<f64>() / (h * w) as f64
            };
            image.mapv_inplace(|v| blend(mean, f64::from(v), f));
        }
        Op::Sharpness => {
            let f = 1.0 + sign * linspace(0.9, magnitude);
            sharpness(image, f);
        }
        Op::Posterize => {
            let bits = 8 - (f64::from(magnitude) / ((BINS - 1.0) / 4.0)).round() as u32;
            let mask = !((1u16 << (8 - bits)) - 1) as u8;
            image.mapv_inplace(|v| v & mask);
        }
        Op::Solarize => {
            let threshold = 255.0 - linspace(255.0, magnitude);
            image.mapv_inplace(|v| {
                if f64::from(v) >= threshold {
                    255 - v
                } else {
                    v
                }
            });
        }
        Op::AutoContrast => {
            for mut plane in image.axis_iter_mut(ndarray::Axis(2)) {
                let lo = *plane.iter().min().unwrap_or(&0);
                let hi = *plane.iter().max().unwrap_or(&255);
                if hi > lo {
                    let scale = 255.0 / f64::from(hi - lo);
                    plane.mapv_inplace(|v| (f64::from(v - lo) * scale).clamp(0.0, 255.0) as u8);
                }
            }
        }
        Op::Equalize => {
            for mut plane in image.axis_iter_mut(ndarray::Axis(2)) {
                let mut hist = [0usize; 256];
                for v in plane.iter() {
                    hist[*v as usize] += 1;
                }
                // PIL's equalize: steps from the histogram without its last non-zero bin.
                let last = hist.iter().rposition(|&n| n > 0).unwrap_or(0);
                let total: usize = hist.iter().sum::<usize>() - hist[last];
                let step = total / 255;
                if step == 0 {
                    continue;
                }
                let mut lut = [0u8; 256];
                let mut acc = step / 2;
                for (i, n) in hist.iter().enumerate() {
                    lut[i] = (acc / step).min(255) as u8;
                    acc += n;
                }
                plane.mapv_inplace(|v| lut[v as usize]);
            }
        }
    }
}

/// ITU-R 601 luma, as PIL's `L` conversion.
fn gray(r: u8, g: u8, b: u8) -> f64 {
    (f64::from(r) * 299.0 + f64::from(g) * 587.0 + f64::from(b) * 114.0) / 1000.0
}

/// `base + factor * (value - base)`, clamped to a byte.
fn blend(base: f64, value: f64, factor: f64) -> u8 {
    (base + factor * (value - base)).round().clamp(0.0, 255.0) as u8
}

/// Output pixel `(x, y)` takes source pixel `(a x + b y + c, d x + e y + f)` (nearest);
/// outside the source it is black.
fn affine(image: &mut Array3<u8>, m: [f64; 6]) {
    let (h, w, ch) = image.dim();
    let src = image.clone();
    for y in 0..h {
        for x in 0..w {
            let (xf, yf) = (x as f64, y as f64);
            let sx = (m[0] * xf + m[1] * yf + m[2]).round();
            let sy = (m[3] * xf + m[4] * yf + m[5]).round();
            let inside = sx >= 0.0 && sy >= 0.0 && sx < w as f64 && sy < h as f64;
            for c in 0..ch {
                image[[y, x, c]] = if inside {
                    src[[sy as usize, sx as usize, c]]
                } else {
                    0
                };
            }
        }
    }
}

/// Blend with PIL's smoothing filter (`[[1,1,1],[1,5,1],[1,1,1]] / 13`); borders kept.
fn sharpness(image: &mut Array3<u8>, factor: f64) {
    let (h, w, ch) = image.dim();
    if h < 3 || w < 3 {
        return;
    }
    let src = image.clone();
    for y in 1..h - 1 {
        for x in 1..w - 1 {
            for c in 0..ch {
                let mut sum = 4.0 * f64::from(src[[y, x, c]]);
                for dy in 0..3 {
                    for dx in 0..3 {
                        sum += f64::from(src[[y + dy - 1, x + dx - 1, c]]);
                    }
                }
                let smooth = (sum / 13.0).round();
                image[[y, x, c]] = blend(smooth, f64::from(src[[y, x, c]]), factor);
            }
        }
    }
}
