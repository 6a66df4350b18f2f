//! The pipeline: deterministic batches, both resolutions from one crop, transforms,
//! RandAugment's operations, mixup and cutmix.

mod common;

use basis_train::data::{
    center_crop_box, randaugment, random_resized_crop_box, resize_box, AugmentConfig, Dataset,
    FashionMnist, HostBatch, ImageFolder, Loader, LoaderConfig, MixConfig, Split,
};
use ndarray::{Array1, Array3, Array4};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::sync::Arc;

fn fashion() -> Arc<dyn Dataset> {
    Arc::new(FashionMnist::open(&common::prepared("fashion-mnist"), Split::Test).unwrap())
}

fn fashion_augment() -> AugmentConfig {
    AugmentConfig {
        resolution: 28,
        light_resolution: Some(20),
        scale: [0.5, 1.0],
        rand_augment: Some([2, 9]),
        random_erasing: 0.25,
        crop_pct: 1.0,
        mean: vec![0.286],
        std: vec![0.353],
        ..AugmentConfig::default()
    }
}

fn batches(workers: usize, seed: u64, epoch: u64) -> Vec<HostBatch> {
    let config = LoaderConfig {
        batch_size: 50,
        workers,
        seed,
        ..LoaderConfig::default()
    };
    let loader = Loader::new(fashion(), fashion_augment(), true, config)
        .unwrap()
        .with_mix(MixConfig::default())
        .unwrap();
    loader.epoch(epoch).take(6).map(Result::unwrap).collect()
}

#[test]
fn batches_depend_on_the_seed_not_on_the_workers() {
    let one = batches(1, 7, 3);
    let three = batches(3, 7, 3);
    assert_eq!(one.len(), 6);
    for (a, b) in one.iter().zip(&three) {
        assert_eq!(a.indices, b.indices);
        assert_eq!(a.images, b.images);
        assert_eq!(a.light_images, b.light_images);
        assert_eq!(a.targets, b.targets);
    }
    let other_seed = batches(1, 8, 3);
    assert_ne!(one[0].indices, other_seed[0].indices);
    let other_epoch = batches(1, 7, 4);
    assert_ne!(one[0].indices, other_epoch[0].indices);
    // Shapes: both resolutions, soft targets that sum to one.
    let b = &one[0];
    assert_eq!(b.images.dim(), (50, 1, 28, 28));
    assert_eq!(b.light_images.as_ref().unwrap().dim(), (50, 1, 20, 20));
    let t = b.targets.as_ref().unwrap();
    for row in t.rows() {
        assert!((row.sum() - 1.0).abs() < 1e-5);
    }
}

#[test]
fn an_epoch_visits_every_sample_once_and_stops_cleanly() {
    let config = LoaderConfig {
        batch_size: 128,
        workers: 2,
        prefetch: 1,
        ..LoaderConfig::default()
    };
    let augment = common::identity_28px();
    let loader = Loader::new(fashion(), augment.clone(), false, config.clone()).unwrap();
    assert_eq!(loader.num_batches(), 79);
    let mut seen = vec![false; 10_000];
    for batch in loader.epoch(0) {
        for i in batch.unwrap().indices {
            assert!(!seen[i]);
            seen[i] = true;
        }
    }
    assert!(seen.iter().all(|&s| s));
    // Evaluation without shuffling is the identity transform at 28 px: pixels come back.
    let plain = Loader::new(
        fashion(),
        augment,
        false,
        LoaderConfig {
            shuffle: false,
            ..config
        },
    )
    .unwrap();
    let batch = plain.epoch(0).next().unwrap().unwrap();
    let first = fashion().get(0).unwrap().image;
    let restored = (batch.images[[0, 0, 10, 10]] * 0.5 + 0.5) * 255.0;
    assert!((restored - f32::from(first[[10, 10, 0]])).abs() < 0.5);
    // Dropping an epoch early stops its workers (the test would hang otherwise).
    let mut early = plain.epoch(1);
    early.next();
    drop(early);
}

#[test]
fn the_light_copy_is_the_same_crop_resized() {
    let config = LoaderConfig {
        batch_size: 4,
        workers: 1,
        ..LoaderConfig::default()
    };
    let augment = AugmentConfig {
        resolution: 64,
        light_resolution: Some(32),
        ..AugmentConfig::default()
    };
    let folder: Arc<dyn Dataset> =
        Arc::new(ImageFolder::open(&common::prepared("foolbox").join("imagenet/val"), 3).unwrap());
    let loader = Loader::new(folder, augment, true, config).unwrap();
    let batch = loader.epoch(0).next().unwrap().unwrap();
    let (full, light) = (&batch.images, batch.light_images.as_ref().unwrap());
    // 2x2 average of the full image ~ the light copy (antialiased bilinear downscale by 2
    // weighs 4 taps 1/8, 3/8, 3/8, 1/8: close to the box average away from sharp edges).
    let mut total = 0f32;
    for b in 0..4 {
        for c in 0..3 {
            for y in 0..32 {
                for x in 0..32 {
                    let avg = (full[[b, c, 2 * y, 2 * x]]
                        + full[[b, c, 2 * y + 1, 2 * x]]
                        + full[[b, c, 2 * y, 2 * x + 1]]
                        + full[[b, c, 2 * y + 1, 2 * x + 1]])
                        / 4.0;
                    total += (avg - light[[b, c, y, x]]).abs();
                }
            }
        }
    }
    let mean = total / (4 * 3 * 32 * 32) as f32;
    // In normalized units (1.0 is about 57 gray levels): a different crop would be ~0.5.
    assert!(mean < 0.06, "{mean}");
}

#[test]
fn crop_boxes_follow_torchvision() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for _ in 0..200 {
        let (top, left, h, w) =
            random_resized_crop_box(300, 500, [0.08, 1.0], [0.75, 4.0 / 3.0], &mut rng);
        assert!(top >= 0.0 && left >= 0.0 && top + h <= 300.0 && left + w <= 500.0);
        let area = h * w / 150_000.0;
        assert!((0.07..=1.0).contains(&area), "{area}");
    }
    // Evaluation: shorter side to 256 (448 x 640 -> 256 x 365), center 224 (offsets 16
    // and round(70.5) = 70, ties to even as Python rounds), back in source pixels.
    let (top, left, h, w) = center_crop_box(448, 640, 224, 0.875);
    let (sy, sx) = (256.0 / 448.0, 365.0 / 640.0);
    assert_eq!(
        (top, left, h, w),
        (16.0 / sy, 70.0 / sx, 224.0 / sy, 224.0 / sx)
    );
    // A constant image stays constant through a resize.
    let flat = Array3::from_elem((40, 60, 3), 77u8);
    let out = resize_box(&flat, (5.0, 7.0, 30.0, 45.0), 16, 16).unwrap();
    assert!(out.iter().all(|&v| v == 77));
}

#[test]
fn randaugment_operations_do_what_they_say() {
    use randaugment::{apply_op, Op};
    let ramp = Array3::from_shape_fn((8, 8, 3), |(y, x, c)| (y * 30 + x * 2 + c) as u8);
    let run = |op, m, sign| {
        let mut img = ramp.clone();
        apply_op(&mut img, op, m, sign);
        img
    };
    assert_eq!(run(Op::Identity, 30, 1.0), ramp);
    // Solarize at the top magnitude inverts everything; at 0 nothing.
    assert_eq!(run(Op::Solarize, 30, 1.0), ramp.mapv(|v| 255 - v));
    assert_eq!(run(Op::Solarize, 0, 1.0), ramp);
    // Posterize at the top magnitude keeps 4 bits.
    assert_eq!(run(Op::Posterize, 30, 1.0), ramp.mapv(|v| v & 0xF0));
    // Brightness -0.9 darkens to a tenth.
    assert_eq!(
        run(Op::Brightness, 30, -1.0)[[7, 7, 2]],
        ((7 * 30 + 14 + 2) as f64 * 0.1).round() as u8
    );
    // Translate by whole pixels, black fill.
    let moved = run(Op::TranslateX, 30, 1.0);
    let shift = (150.0f64 / 331.0 * 8.0).trunc() as usize;
    assert_eq!(moved[[3, shift, 0]], ramp[[3, 0, 0]]);
    assert_eq!(moved[[3, 0, 0]], 0);
    // Rotating by 0 degrees is the identity; auto-contrast stretches to 0..255.
    assert_eq!(run(Op::Rotate, 0, 1.0), ramp);
    let stretched = run(Op::AutoContrast, 0, 1.0);
    assert_eq!((stretched[[0, 0, 0]], stretched[[7, 7, 0]]), (0, 255));
    // Sharpness at factor 1 is the identity.
    assert_eq!(run(Op::Sharpness, 0, 1.0), ramp);
    // Equalize spreads a dark image's histogram over 0..255.
    let mut dark = Array3::from_shape_fn((32, 32, 1), |(y, x, _)| ((y * 32 + x) % 64) as u8);
    apply_op(&mut dark, Op::Equalize, 0, 1.0);
    let max = *dark.iter().max().unwrap();
    assert!(max > 240, "{max}");
}

#[test]
fn cutmix_and_mixup_mix_targets_as_much_as_pixels() {
    let n = 6;
    let images = Array4::from_shape_fn((n, 1, 10, 10), |(b, _, _, _)| b as f32);
    let labels = Array1::from((0..n as i64).collect::<Vec<_>>());
    for (mixup, cutmix) in [(0.0, 1.0), (0.8, 0.0)] {
        let mut batch = HostBatch {
            images: images.clone(),
            light_images: Some(Array4::from_shape_fn((n, 1, 5, 5), |(b, _, _, _)| b as f32)),
            labels: labels.clone(),
            targets: None,
            indices: (0..n).collect(),
        };
        let config = MixConfig {
            mixup_alpha: mixup,
            cutmix_alpha: cutmix,
            label_smoothing: 0.0,
            ..MixConfig::default()
        };
        config.apply(&mut batch, 6, &mut ChaCha8Rng::seed_from_u64(3));
        let t = batch.targets.unwrap();
        // Sample 0 mixes with sample 5: the weight of label 0 is the share of its pixels.
        let share0 = batch
            .images
            .slice(ndarray::s![0, 0, .., ..])
            .iter()
            .map(|&v| 1.0 - v / 5.0)
            .sum::<f32>()
            / 100.0;
        assert!(
            (t[[0, 0]] - share0).abs() < 1e-5,
            "{} vs {share0}",
            t[[0, 0]]
        );
        assert!((t[[0, 0]] + t[[0, 5]] - 1.0).abs() < 1e-5);
        let light_share = batch
            .light_images
            .unwrap()
            .slice(ndarray::s![0, 0, .., ..])
            .iter()
            .map(|&v| 1.0 - v / 5.0)
            .sum::<f32>()
            / 25.0;
        assert!(
            (light_share - share0).abs() < 0.15,
            "{light_share} vs {share0}"
        );
    }
}
