//! Datasets: Fashion-MNIST, CIFAR's binary format, image folders, and bad data.

mod common;

use basis_train::data::{
    idx, AugmentConfig, Cifar, CifarVariant, DataError, Dataset, FashionMnist, ImageFolder, Loader,
    LoaderConfig, Split,
};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

#[test]
fn fashion_mnist_has_its_splits_and_labels() {
    let dir = common::prepared("fashion-mnist");
    let train = FashionMnist::open(&dir, Split::Train).unwrap();
    let test = FashionMnist::open(&dir, Split::Test).unwrap();
    assert_eq!((train.len(), test.len()), (60_000, 10_000));
    assert_eq!(train.classes()[9], "Ankle boot");
    let first = train.get(0).unwrap();
    assert_eq!(first.image.dim(), (28, 28, 1));
    // The first training image is an ankle boot; the first test image too.
    assert_eq!(first.label, 9);
    assert_eq!(test.get(0).unwrap().label, 9);
    // Every class appears 6,000 times in training.
    let mut counts = [0usize; 10];
    for i in 0..train.len() {
        counts[train.get(i).unwrap().label as usize] += 1;
    }
    assert_eq!(counts, [6000; 10]);
    let mean: f64 = first.image.iter().map(|&v| f64::from(v)).sum::<f64>() / 784.0;
    assert!(mean > 10.0 && mean < 200.0, "{mean}");

    // The recipe's splits: 5,000 training images held out for validation, disjoint from
    // what is trained on, the same every time, every class present.
    let section = basis_train::data::DataSection {
        dir: Some(dir.clone()),
        validation: 5000,
        ..Default::default()
    };
    let (t, v, x) = (
        section.open(Split::Train, 1).unwrap(),
        section.open(Split::Val, 1).unwrap(),
        section.open(Split::Test, 1).unwrap(),
    );
    assert_eq!((t.len(), v.len(), x.len()), (55_000, 5_000, 10_000));
    let names = |ds: &dyn basis_train::data::Dataset| -> std::collections::BTreeSet<String> {
        (0..ds.len()).map(|i| ds.describe(i)).collect()
    };
    let (tn, vn) = (names(t.as_ref()), names(v.as_ref()));
    assert_eq!(tn.len() + vn.len(), 60_000);
    assert!(tn.is_disjoint(&vn), "a validation image is trained on");
    let mut per_class = [0usize; 10];
    for i in 0..v.len() {
        per_class[v.get(i).unwrap().label as usize] += 1;
    }
    assert!(
        per_class.iter().all(|&c| (400..600).contains(&c)),
        "{per_class:?}"
    );
    assert_eq!(names(section.open(Split::Val, 1).unwrap().as_ref()), vn);
    let err = basis_train::data::DataSection {
        validation: 60_000,
        ..section
    }
    .open(Split::Train, 1)
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("data.validation = 60000 leaves no training images"),
        "{err}"
    );
}

fn write_gz(path: &Path, bytes: &[u8]) {
    let mut enc = flate2::write::GzEncoder::new(
        std::fs::File::create(path).unwrap(),
        flate2::Compression::fast(),
    );
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap();
}

fn idx_bytes(ndim: u8, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 8, ndim];
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

#[test]
fn an_idx_header_announcing_billions_of_samples_is_refused_at_once() {
    let dir = common::scratch("idx-billions");
    let billions = 3_000_000_000u32;
    write_gz(
        &dir.join("train-images-idx3-ubyte.gz"),
        &idx_bytes(3, &[billions, 28, 28], &[7; 784]),
    );
    write_gz(
        &dir.join("train-labels-idx1-ubyte.gz"),
        &idx_bytes(1, &[billions], &[1]),
    );
    let err = FashionMnist::open(&dir, Split::Train)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("the header announces 3000000000 images of 28x28, the files hold 1"),
        "{err}"
    );
    // Images of 65535 x 65535 pixels: not one is whole.
    write_gz(
        &dir.join("train-images-idx3-ubyte.gz"),
        &idx_bytes(3, &[1, 65535, 65535], &[7; 784]),
    );
    write_gz(
        &dir.join("train-labels-idx1-ubyte.gz"),
        &idx_bytes(1, &[1], &[1]),
    );
    let err = FashionMnist::open(&dir, Split::Train)
        .unwrap_err()
        .to_string();
    assert!(err.contains("the files hold 0"), "{err}");
}

#[test]
fn idx_files_with_a_wrong_magic_or_a_short_read_are_named() {
    let dir = common::scratch("idx-bad");
    // Wrong magic: a labels file where images are expected.
    write_gz(
        &dir.join("train-images-idx3-ubyte.gz"),
        &idx_bytes(1, &[3], &[1, 2, 3]),
    );
    write_gz(
        &dir.join("train-labels-idx1-ubyte.gz"),
        &idx_bytes(1, &[3], &[1, 2, 3]),
    );
    let err = FashionMnist::open(&dir, Split::Train)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(
            "train-images-idx3-ubyte.gz: idx magic [00, 00, 08, 01], expected [00, 00, 08, 03]"
        ),
        "{err}"
    );
    // Announces 4 images, holds 2.5: samples 2 and 3 are bad, 0 and 1 are fine.
    let pixels: Vec<u8> = (0..(2 * 784 + 400)).map(|i| (i % 251) as u8).collect();
    write_gz(
        &dir.join("train-images-idx3-ubyte.gz"),
        &idx_bytes(3, &[4, 28, 28], &pixels),
    );
    write_gz(
        &dir.join("train-labels-idx1-ubyte.gz"),
        &idx_bytes(1, &[4], &[3, 11, 5, 6]),
    );
    let ds = FashionMnist::open(&dir, Split::Train).unwrap();
    assert_eq!(ds.len(), 4);
    assert_eq!(ds.get(0).unwrap().label, 3);
    assert_eq!(ds.get(0).unwrap().image[[0, 5, 0]], 5);
    // Label 11 is out of range for 10 classes.
    let err = ds.get(1).unwrap_err().to_string();
    assert_eq!(err, "fashion-mnist train #1: label 11 out of range (0..10)");
    let err = ds.get(3).unwrap_err().to_string();
    assert!(
        err.contains("short read: the files hold 2 of the 4 samples"),
        "{err}"
    );
    // The loader skips the three bad samples and reports them...
    let config = LoaderConfig {
        batch_size: 4,
        shuffle: false,
        ..LoaderConfig::default()
    };
    let augment = common::identity_28px();
    let ds: Arc<dyn Dataset> = Arc::new(ds);
    let loader = Loader::new(ds.clone(), augment.clone(), false, config.clone()).unwrap();
    let mut epoch = loader.epoch(0);
    let batch = epoch.next().unwrap().unwrap();
    assert_eq!(batch.labels.to_vec(), vec![3]);
    assert!(epoch.next().is_none());
    let report = epoch.report();
    assert_eq!((report.samples, report.skipped), (1, 3));
    assert!(report
        .summary()
        .unwrap()
        .starts_with("skipped 3 bad sample(s) of 4; first: "));
    // Past data.max_bad_fraction (here half), the epoch ends with the count and the first.
    let limited = LoaderConfig {
        max_bad_fraction: 0.5,
        ..config.clone()
    };
    let loader = Loader::new(ds.clone(), augment.clone(), false, limited).unwrap();
    let results: Vec<_> = loader.epoch(0).collect();
    assert_eq!(results.len(), 2, "one batch, then the error");
    let err = results[1].as_ref().unwrap_err().to_string();
    assert!(
        err.starts_with("3 of 4 samples (75.0%) were bad, more than data.max_bad_fraction = 50.0% allows (first: fashion-mnist train #1: label 11 out of range (0..10)"),
        "{err}"
    );
    // An evaluation counts what it left out, and names the first few.
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let recipe = basis_train::Recipe::load("fashion-quick").unwrap();
    let model = basis_train::Model::build(&vs.root(), &recipe).unwrap();
    let loader = Loader::new(ds.clone(), augment.clone(), false, config.clone()).unwrap();
    let e = basis_train::evaluate(&model, None, &loader, &[], 28).unwrap();
    assert_eq!((e.images, e.bad_samples), (1, 3));
    assert_eq!(e.bad_examples.len(), 3);
    let json = serde_json::to_value(&e).unwrap();
    assert_eq!(json["bad_samples"], 3);
    // ...and, strict, stops at the first with its name.
    let strict = LoaderConfig {
        strict: true,
        ..config
    };
    let loader = Loader::new(ds, augment, false, strict).unwrap();
    let err = loader.epoch(0).next().unwrap().unwrap_err();
    assert_eq!(
        err.to_string(),
        "fashion-mnist train #1: label 11 out of range (0..10)"
    );
    // Not gzip at all.
    std::fs::write(dir.join("t10k-images-idx3-ubyte.gz"), b"plain text").unwrap();
    std::fs::write(dir.join("t10k-labels-idx1-ubyte.gz"), b"plain text").unwrap();
    let err = FashionMnist::open(&dir, Split::Test)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a gzip file"), "{err}");
    // Missing files name the command that prepares them.
    let err = FashionMnist::open(&dir.join("nowhere"), Split::Train)
        .unwrap_err()
        .to_string();
    assert!(err.contains("cargo xtask data fashion-mnist"), "{err}");
    let parsed = idx::parse(Path::new("x"), &[0, 0, 8], 1)
        .unwrap_err()
        .to_string();
    assert!(parsed.contains("too short for an idx header"), "{parsed}");
}

#[test]
fn cifar_binary_records_become_hwc_images() {
    let dir = common::scratch("cifar");
    let record = |label: u8, base: u8| {
        let mut r = vec![label];
        for ch in 0..3u8 {
            r.extend(std::iter::repeat_n(base + ch, 1024));
        }
        r
    };
    let mut bytes = record(7, 10);
    bytes.extend(record(12, 20)); // out of range for CIFAR-10
    bytes.extend(&record(1, 30)[..100]); // cut short
    std::fs::write(dir.join("test_batch.bin"), &bytes).unwrap();
    let ds = Cifar::open(&dir, CifarVariant::Cifar10, Split::Test).unwrap();
    assert_eq!(ds.len(), 3);
    let s = ds.get(0).unwrap();
    assert_eq!((s.label, s.image.dim()), (7, (32, 32, 3)));
    assert_eq!(
        [s.image[[5, 9, 0]], s.image[[5, 9, 1]], s.image[[5, 9, 2]]],
        [10, 11, 12]
    );
    assert!(ds
        .get(1)
        .unwrap_err()
        .to_string()
        .contains("label 12 out of range (0..10)"));
    assert!(ds.get(2).unwrap_err().to_string().contains("short read"));
    assert!(matches!(
        Cifar::open(&dir, CifarVariant::Cifar10, Split::Train),
        Err(DataError::Io { .. })
    ));
    // CIFAR-100: coarse then fine label.
    let mut r = vec![3u8, 42];
    r.extend(vec![0u8; 3072]);
    std::fs::write(dir.join("train.bin"), &r).unwrap();
    let ds = Cifar::open(&dir, CifarVariant::Cifar100, Split::Train).unwrap();
    assert_eq!(ds.get(0).unwrap().label, 42);
    assert_eq!(ds.classes().len(), 100);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let target = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &target);
        } else {
            std::fs::copy(&p, &target).unwrap();
        }
    }
}

#[test]
fn image_folders_decode_and_report_bad_files_without_shifting_labels() {
    let foolbox = common::prepared("foolbox");
    let ds = ImageFolder::open(&foolbox.join("imagenet/val"), 3).unwrap();
    assert_eq!(ds.len(), 20);
    for i in 0..ds.len() {
        let s = ds.get(i).unwrap();
        assert_eq!(s.image.dim().2, 3);
        assert!(s.image.dim().0 >= 100);
        // The class folder is the label of the file name.
        let name = ds.describe(i);
        let label: i64 = name
            .rsplit('_')
            .next()
            .unwrap()
            .trim_end_matches(".jpg")
            .parse()
            .unwrap();
        assert_eq!(
            ds.classes()[s.label as usize].parse::<i64>().unwrap(),
            label
        );
    }
    let cifar = ImageFolder::open(&foolbox.join("cifar10/val"), 3).unwrap();
    assert_eq!(
        (cifar.len(), cifar.get(0).unwrap().image.dim()),
        (20, (32, 32, 3))
    );
    // The 20 images carry 8 of the 10 labels.
    assert_eq!(cifar.classes().len(), 8);

    // A copy with a truncated JPEG, a text file named .jpg, and an empty class first.
    let dir = common::scratch("folder-bad");
    copy_dir(&foolbox.join("imagenet/val"), &dir);
    std::fs::create_dir_all(dir.join("0000")).unwrap();
    let first_class = &ds.classes()[0];
    let victim = std::fs::read_dir(dir.join(first_class))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let bytes = std::fs::read(&victim).unwrap();
    std::fs::write(&victim, &bytes[..bytes.len() / 3]).unwrap();
    std::fs::write(dir.join(first_class).join("notes.jpg"), b"not an image").unwrap();
    let bad = ImageFolder::open(&dir, 3).unwrap();
    assert_eq!(bad.empty_classes(), ["0000"]);
    assert_eq!(bad.classes().len(), ds.classes().len() + 1);
    assert_eq!(bad.len(), 21);
    let augment = AugmentConfig {
        resolution: 64,
        ..AugmentConfig::default()
    };
    let config = LoaderConfig {
        batch_size: 8,
        ..LoaderConfig::default()
    };
    let bad: Arc<dyn Dataset> = Arc::new(bad);
    let loader = Loader::new(bad.clone(), augment.clone(), true, config.clone()).unwrap();
    let mut epoch = loader.epoch(0);
    let mut seen = 0;
    for batch in epoch.by_ref() {
        let batch = batch.unwrap();
        // Labels follow the folders: the empty "0000" is class 0, so no image has label 0.
        assert!(batch.labels.iter().all(|&l| l >= 1));
        seen += batch.len();
    }
    let report = epoch.report();
    assert_eq!((seen, report.skipped), (19, 2));
    assert!(report
        .first_bad
        .iter()
        .any(|b| b.contains("notes.jpg: cannot decode")));
    assert!(report
        .first_bad
        .iter()
        .any(|b| b.contains("truncated JPEG")));
    let strict = Loader::new(
        bad,
        augment,
        true,
        LoaderConfig {
            strict: true,
            ..config
        },
    )
    .unwrap();
    let err = strict
        .epoch(0)
        .find_map(|b| b.err())
        .expect("strict stops at a bad file")
        .to_string();
    assert!(err.contains(first_class.as_str()), "{err}");
    assert!(
        err.contains("cannot decode") || err.contains("truncated JPEG"),
        "{err}"
    );
    // An empty root, and a root with class folders but no images.
    let empty = common::scratch("folder-empty");
    assert!(ImageFolder::open(&empty, 3)
        .unwrap_err()
        .to_string()
        .contains("no class folders"));
    std::fs::create_dir_all(empty.join("a")).unwrap();
    assert!(ImageFolder::open(&empty, 3)
        .unwrap_err()
        .to_string()
        .contains("no jpg/jpeg/png files"));
}
