//! Per-image transforms: random resized crop, flip, RandAugment, random erasing, resize and
//! center crop for evaluation, normalization; both resolutions a BasisNet needs come from
//! the same crop.

use super::error::DataError;
use super::randaugment::RandAugment;
use fast_image_resize::images::Image;
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use ndarray::Array3;
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;

/// ImageNet's channel means (RGB, in [0, 1]).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet's channel standard deviations.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// What to do to each image. Defaults are timm's ImageNet training transforms without
/// RandAugment and erasing (which a recipe turns on).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AugmentConfig {
    /// Output side (the specialist's resolution).
    pub resolution: u32,
    /// Side of the second, low-resolution copy (the lightweight model's), if any.
    pub light_resolution: Option<u32>,
    /// Random resized crop: area fraction range.
    pub scale: [f64; 2],
    /// Random resized crop: aspect ratio range.
    pub ratio: [f64; 2],
    /// Probability of a horizontal flip.
    pub hflip: f64,
    /// RandAugment, if any: `[num_ops, magnitude]` (timm's `rand-m9-n2` is `[2, 9]`).
    pub rand_augment: Option<[u32; 2]>,
    /// Probability of random erasing (one box of random pixels).
    pub random_erasing: f64,
    /// Evaluation: resize the shorter side to `resolution / crop_pct`, then center crop.
    pub crop_pct: f64,
    /// Per-channel mean (in [0, 1]); one value per channel, or one for all.
    pub mean: Vec<f32>,
    /// Per-channel standard deviation.
    pub std: Vec<f32>,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self {
            resolution: 224,
            light_resolution: None,
            scale: [0.08, 1.0],
            ratio: [3.0 / 4.0, 4.0 / 3.0],
            hflip: 0.5,
            rand_augment: None,
            random_erasing: 0.0,
            crop_pct: 0.875,
            mean: IMAGENET_MEAN.to_vec(),
            std: IMAGENET_STD.to_vec(),
        }
    }
}

impl AugmentConfig {
    /// Check the numbers before any work starts.
    pub fn validate(&self, channels: usize) -> Result<(), DataError> {
        let bad = |what: String| Err(DataError::Config(what));
        if self.resolution == 0 || self.light_resolution == Some(0) {
            return bad("resolutions must be >= 1 pixel".into());
        }
        if !(0.0 < self.scale[0] && self.scale[0] <= self.scale[1] && self.scale[1] <= 1.0) {
            return bad(format!(
                "scale must satisfy 0 < min <= max <= 1, found {:?}",
                self.scale
            ));
        }
        if !(0.0 < self.ratio[0] && self.ratio[0] <= self.ratio[1]) {
            return bad(format!(
                "ratio must satisfy 0 < min <= max, found {:?}",
                self.ratio
            ));
        }
        for (name, p) in [
            ("hflip", self.hflip),
            ("random_erasing", self.random_erasing),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return bad(format!("{name} is a probability, found {p}"));
            }
        }
        if !(self.crop_pct > 0.0 && self.crop_pct <= 1.0) {
            return bad(format!(
                "crop_pct must be in (0, 1], found {}",
                self.crop_pct
            ));
        }
        for (name, v) in [("mean", &self.mean), ("std", &self.std)] {
            if v.len() != 1 && v.len() != channels {
                let expected = match channels {
                    1 => "1 (the images have one channel)".to_string(),
                    c => format!("1 or {c} (one per channel)"),
                };
                return bad(format!(
                    "augment.{name} has {} values{}, expected {expected}",
                    v.len(),
                    if *v == IMAGENET_MEAN || *v == IMAGENET_STD {
                        " (ImageNet's, the default)"
                    } else {
                        ""
                    }
                ));
            }
        }
        if self.std.iter().any(|s| *s <= 0.0) {
            return bad(format!("std must be > 0, found {:?}", self.std));
        }
        if let Some([n, m]) = self.rand_augment {
            if n == 0 || m > 30 {
                return bad(format!(
                    "rand_augment is [num_ops >= 1, magnitude 0..=30], found [{n}, {m}]"
                ));
            }
        }
        Ok(())
    }
}

thread_local! {
    static RESIZER: RefCell<Resizer> = RefCell::new(Resizer::new());
}

/// Resize the box `(top, left, height, width)` of `image` to `side x side` (bilinear with
/// antialiasing, as PIL and torchvision resize).
pub fn resize_box(
    image: &Array3<u8>,
    crop: (f64, f64, f64, f64),
    out_h: u32,
    out_w: u32,
) -> Result<Array3<u8>, DataError> {
    let (h, w, c) = image.dim();
    let pixel = if c == 1 {
        PixelType::U8
    } else {
        PixelType::U8x3
    };
    let data = image
        .as_standard_layout()
        .into_owned()
        .into_raw_vec_and_offset()
        .0;
    let src = Image::from_vec_u8(w as u32, h as u32, data, pixel)
        .map_err(|e| DataError::Config(format!("image buffer: {e}")))?;
    let mut dst = Image::new(out_w, out_h, pixel);
    let (top, left, ch, cw) = crop;
    let options = ResizeOptions::new()
        .crop(left, top, cw, ch)
        .resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
    RESIZER
        .with(|r| r.borrow_mut().resize(&src, &mut dst, &options))
        .map_err(|e| DataError::Config(format!("resize: {e}")))?;
    Array3::from_shape_vec((out_h as usize, out_w as usize, c), dst.into_vec())
        .map_err(|e| DataError::Config(e.to_string()))
}

/// torchvision's `RandomResizedCrop.get_params`: a box of random area and aspect ratio,
/// ten tries, then the center crop of the clamped ratio.
pub fn random_resized_crop_box(
    h: usize,
    w: usize,
    scale: [f64; 2],
    ratio: [f64; 2],
    rng: &mut impl Rng,
) -> (f64, f64, f64, f64) {
    let area = (h * w) as f64;
    let (log_lo, log_hi) = (ratio[0].ln(), ratio[1].ln());
    for _ in 0..10 {
        let target = area * rng.random_range(scale[0]..=scale[1]);
        let aspect = rng.random_range(log_lo..=log_hi).exp();
        let cw = (target * aspect).sqrt().round();
        let ch = (target / aspect).sqrt().round();
        if cw > 0.0 && ch > 0.0 && cw <= w as f64 && ch <= h as f64 {
            let top = rng.random_range(0..=(h - ch as usize)) as f64;
            let left = rng.random_range(0..=(w - cw as usize)) as f64;
            return (top, left, ch, cw);
        }
    }
    let in_ratio = w as f64 / h as f64;
    let (cw, ch) = if in_ratio < ratio[0] {
        (w as f64, (w as f64 / ratio[0]).round())
    } else if in_ratio > ratio[1] {
        ((h as f64 * ratio[1]).round(), h as f64)
    } else {
        (w as f64, h as f64)
    };
    (
        ((h as f64 - ch) / 2.0).floor(),
        ((w as f64 - cw) / 2.0).floor(),
        ch,
        cw,
    )
}

/// The evaluation box, in source pixels: what torchvision's `Resize(floor(resolution /
/// crop_pct))` (shorter side; the longer one truncated) followed by
/// `CenterCrop(resolution)` keeps, so that one resampling of this box gives the same grid.
pub fn center_crop_box(h: usize, w: usize, resolution: u32, crop_pct: f64) -> (f64, f64, f64, f64) {
    let size = (f64::from(resolution) / crop_pct).floor() as usize;
    let (new_h, new_w) = if h <= w {
        (size, size * w / h)
    } else {
        (size * h / w, size)
    };
    let r = f64::from(resolution);
    let top = ((new_h as f64 - r) / 2.0).round_ties_even();
    let left = ((new_w as f64 - r) / 2.0).round_ties_even();
    let (sy, sx) = (new_h as f64 / h as f64, new_w as f64 / w as f64);
    (top / sy, left / sx, r / sy, r / sx)
}

/// Mirror left-right in place.
pub fn hflip(image: &mut Array3<u8>) {
    image.invert_axis(ndarray::Axis(1));
    *image = image.as_standard_layout().into_owned();
}

/// timm's random erasing (one box, area 2%..33%, ratio 0.3..3.3) filled with random
/// pixels, applied with probability `p`.
pub fn random_erase(image: &mut Array3<u8>, p: f64, rng: &mut impl Rng) {
    if p == 0.0 || rng.random::<f64>() >= p {
        return;
    }
    let (h, w, c) = image.dim();
    let area = (h * w) as f64;
    for _ in 0..10 {
        let target = area * rng.random_range(0.02..1.0 / 3.0);
        let aspect = rng.random_range(0.3f64.ln()..3.3f64.ln()).exp();
        let eh = (target * aspect).sqrt() as usize;
        let ew = (target / aspect).sqrt() as usize;
        if eh > 0 && ew > 0 && eh < h && ew < w {
            let top = rng.random_range(0..=h - eh);
            let left = rng.random_range(0..=w - ew);
            for y in top..top + eh {
                for x in left..left + ew {
                    for ch in 0..c {
                        image[[y, x, ch]] = rng.random();
                    }
                }
            }
            return;
        }
    }
}

/// Write `(pixel / 255 - mean) / std`, channel-major, into `out` (`C * H * W` values).
pub fn normalize_into(image: &Array3<u8>, mean: &[f32], std: &[f32], out: &mut [f32]) {
    let (h, w, c) = image.dim();
    let plane = h * w;
    for ch in 0..c {
        let m = mean[ch.min(mean.len() - 1)];
        let s = std[ch.min(std.len() - 1)];
        let (scale, shift) = (1.0 / (255.0 * s), -m / s);
        let dst = &mut out[ch * plane..(ch + 1) * plane];
        for (d, v) in dst
            .iter_mut()
            .zip(image.index_axis(ndarray::Axis(2), ch).iter())
        {
            *d = f32::from(*v) * scale + shift;
        }
    }
}

/// The transform of one image, returning the full- and (if asked) low-resolution copies,
/// still as bytes.
pub fn transform(
    config: &AugmentConfig,
    image: &Array3<u8>,
    train: bool,
    rng: &mut impl Rng,
) -> Result<(Array3<u8>, Option<Array3<u8>>), DataError> {
    let (h, w, _) = image.dim();
    let r = config.resolution;
    let out = if train {
        let crop = random_resized_crop_box(h, w, config.scale, config.ratio, rng);
        let mut out = resize_box(image, crop, r, r)?;
        if rng.random::<f64>() < config.hflip {
            hflip(&mut out);
        }
        if let Some([n, m]) = config.rand_augment {
            RandAugment::new(n as usize, m).apply(&mut out, rng);
        }
        random_erase(&mut out, config.random_erasing, rng);
        out
    } else {
        resize_box(image, center_crop_box(h, w, r, config.crop_pct), r, r)?
    };
    let light = config
        .light_resolution
        .map(|lr| resize_box(&out, (0.0, 0.0, f64::from(r), f64::from(r)), lr, lr))
        .transpose()?;
    Ok((out, light))
}
