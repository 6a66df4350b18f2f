//! Pretrained weights with timm's and torchvision's names, through `scripts/timm_parity.py`
//! and the timm that `cargo xtask setup` installed: timm's MobileNets give timm's logits
//! here within 1e-4, a specialist whose every basis starts from them (no noise) gives the
//! static network's logits for any coefficients, and files that do not fit are one sentence.

mod common;

use basis_models::pretrained::{Pretrained, WeightSource};
use basis_models::{Arch, BasisSpec, MobileNet, MobileNetConfig};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{nn, Device, Kind, Tensor};

const TOLERANCE: f64 = 1e-4;

/// The script's files, exported once per test process.
fn exported() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("pretrained-parity");
        let _ = std::fs::remove_dir_all(&dir);
        common::python("timm_parity.py", &[dir.as_os_str()]);
        dir
    })
    .clone()
}

fn io(dir: &Path, model: &str) -> (Tensor, Tensor) {
    let (io, _) =
        basis_models::checkpoint::read(&dir.join(format!("{model}.io.safetensors"))).unwrap();
    (io["input"].shallow_clone(), io["logits"].shallow_clone())
}

fn weights(dir: &Path, model: &str) -> Pretrained {
    Pretrained::read(&dir.join(format!("{model}.weights.safetensors"))).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// The configuration of a model of the script, with the eps its weights were trained with.
fn config_for(arch: Arch, weights: &Pretrained) -> MobileNetConfig {
    let mut config = MobileNetConfig::new(arch);
    config.batch_norm.eps = weights.batch_norm_eps(arch);
    config
}

#[test]
fn timm_weights_give_timms_logits() {
    let dir = exported();
    for (model, arch) in [
        ("mobilenetv3_large_100", Arch::MobilenetV3Large),
        ("mobilenetv3_small_100", Arch::MobilenetV3Small),
        ("mobilenetv2_100", Arch::MobilenetV2),
    ] {
        let weights = weights(&dir, model);
        assert_eq!(weights.source(), WeightSource::Timm);
        assert_eq!(weights.batch_norm_eps(arch), 1e-5);
        let (input, expected) = io(&dir, model);
        let (net, _vs, fresh) = weights
            .static_network(config_for(arch, &weights), Device::Cpu)
            .unwrap();
        assert!(fresh.is_empty(), "{model}: {fresh:?}");
        let logits = net.forward_t(&input, &[], false).unwrap();
        let diff = max_diff(&logits, &expected);
        println!("{model}: max |timm - basis-models| = {diff:.3e}");
        assert!(diff <= TOLERANCE, "{model}: logits differ by {diff:.3e}");
        // With torchvision's eps (1e-3 for V3) the same weights give other logits: the eps
        // must follow the file.
        if arch.is_v3() {
            let (tv_eps, _vs, _) = weights
                .static_network(MobileNetConfig::new(arch), Device::Cpu)
                .unwrap();
            let off = max_diff(&tv_eps.forward_t(&input, &[], false).unwrap(), &expected);
            assert!(
                off > 10.0 * TOLERANCE,
                "{model}: eps 1e-3 changes logits by only {off:.3e}"
            );
        }
    }
}

#[test]
fn every_basis_from_the_same_weights_with_no_noise_is_the_static_network() {
    let dir = exported();
    for model in ["torchvision_mobilenet_v3_small", "mobilenetv3_small_100"] {
        let weights = weights(&dir, model);
        let config = config_for(Arch::MobilenetV3Small, &weights);
        let (input, expected) = io(&dir, model);
        let (fixed, _fixed_vs, _) = weights.static_network(config, Device::Cpu).unwrap();
        let static_logits = fixed.forward_t(&input, &[], false).unwrap();
        assert!(max_diff(&static_logits, &expected) <= TOLERANCE, "{model}");
        let vs = nn::VarStore::new(Device::Cpu);
        let specialist = MobileNet::new(&vs.root(), config, BasisSpec::new(4)).unwrap();
        assert!(specialist
            .seed_from_pretrained(&weights, 0.0)
            .unwrap()
            .is_empty());
        for round in 0..3 {
            // Any coefficients: softmax rows, one-hot rows, rows far from uniform.
            let alpha = (Tensor::randn([2, 4], (Kind::Float, Device::Cpu))
                * (1.0 + 4.0 * round as f64))
                .softmax(-1, Kind::Float);
            let logits = specialist.forward_t(&input, &[alpha], false).unwrap();
            let diff = max_diff(&logits, &static_logits);
            assert!(
                diff <= 1e-5,
                "{model}, round {round}: {diff:.3e} from the static network"
            );
        }
        // Noise makes the bases differ, so coefficients matter.
        specialist.seed_from_pretrained(&weights, 0.1).unwrap();
        let alpha =
            Tensor::from_slice(&[1.0f32, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]).reshape([2, 4]);
        let logits = specialist.forward_t(&input, &[alpha], false).unwrap();
        assert!(max_diff(&logits, &static_logits) > TOLERANCE, "{model}");
    }
}

#[test]
fn another_class_count_starts_the_classifier_new_and_other_mismatches_are_one_sentence() {
    let dir = exported();
    let timm_small = weights(&dir, "mobilenetv3_small_100");
    // Ten classes: the last classifier layer starts new, everything else is the file's.
    let config = config_for(Arch::MobilenetV3Small, &timm_small).classes(10);
    let (net, vs, fresh) = timm_small.static_network(config, Device::Cpu).unwrap();
    assert_eq!(fresh, ["classifier.3.weight", "classifier.3.bias"]);
    assert_eq!(net.config().num_classes, 10);
    let stem = &vs.variables()["features.0.0.weight"];
    let (original, _) =
        basis_models::checkpoint::read(&dir.join("mobilenetv3_small_100.weights.safetensors"))
            .unwrap();
    assert_eq!(max_diff(stem, &original["conv_stem.weight"]), 0.0);
    assert_eq!(
        max_diff(
            &vs.variables()["classifier.0.weight"],
            &original["conv_head.weight"].flatten(1, -1)
        ),
        0.0
    );

    // Another architecture: the first tensor that does not fit, its shape and ours.
    let err = timm_small
        .static_network(config_for(Arch::MobilenetV3Large, &timm_small), Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("has shape [")
            && err.contains("the model expects [")
            && err.ends_with("(timm mobilenet_v3_large)"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    // One input channel (Fashion-MNIST) against ImageNet's three.
    let err = timm_small
        .static_network(config.in_channels(1), Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(
            "features.0.0.weight has shape [16, 3, 3, 3], the model expects [16, 1, 3, 3]"
        ),
        "{err}"
    );

    // A file of other names, and a timm file with an unknown module.
    let junk = dir.join("junk.safetensors");
    let one = |name: &str| {
        let mut t = BTreeMap::new();
        t.insert(
            name.to_string(),
            Tensor::zeros([2], (Kind::Float, Device::Cpu)),
        );
        t.into_iter().collect::<Vec<_>>()
    };
    basis_models::checkpoint::write(&junk, &one("encoder.layer0.weight"), &Default::default())
        .unwrap();
    let err = Pretrained::read(&junk).unwrap_err().to_string();
    assert!(
        err.contains("expected a MobileNet state dict with torchvision's names (features.*) or timm's (conv_stem, blocks.*), found tensors such as encoder.layer0.weight"),
        "{err}"
    );
    let mut odd = one("conv_stem.weight");
    odd.extend(one("blocks.0.0.attention.weight"));
    basis_models::checkpoint::write(&junk, &odd, &Default::default()).unwrap();
    let err = Pretrained::read(&junk).unwrap_err().to_string();
    assert!(
        err.contains("timm block blocks.0.0 is of no kind this table knows"),
        "{err}"
    );
}
