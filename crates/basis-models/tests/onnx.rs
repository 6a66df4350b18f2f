//! ONNX export against ONNX Runtime (`scripts/onnx_check.py`, the onnxruntime that `cargo
//! xtask setup` installed): the lightweight and specialist graphs of basisnet-fashion and
//! basisnet-mv3 (random weights, randomized batch-norm statistics), the specialist in both
//! forms (scan, batched), at batch 1 and 7 give our outputs within 1e-4 from one file each
//! (the batch is dynamic), and a static
//! MobileNetV3-Large's graph gives torchvision's logits with the same weights.

mod common;

use basis_models::onnx::SpecialistForm;
use basis_models::{checkpoint, presets, Arch, BasisNet, BasisSpec, MobileNet, MobileNetConfig};
use std::collections::BTreeMap;
use std::path::Path;
use tch::{nn, Device, Kind, Tensor};

const TOLERANCE: f64 = 1e-4;
const OPSET: i64 = basis_models::onnx::MIN_OPSET;

/// Batch-norm statistics and affine terms away from their initial values, so the folded
/// normalization is really exercised, and linear layers (classifiers, the coefficient head)
/// scaled for logits and coefficient logits of spread about 1 rather than torchvision's
/// near-zero start.
fn randomize(vs: &nn::VarStore) {
    tch::no_grad(|| {
        for (name, var) in vs.variables() {
            let mut v = var.shallow_clone();
            let n = v.size();
            let opts = (Kind::Float, Device::Cpu);
            if name.ends_with("running_mean") {
                v.copy_(&(Tensor::randn(&n[..], opts) * 0.1));
            } else if name.ends_with("running_var")
                || (name.contains("features") && n.len() == 1 && name.ends_with("weight"))
            {
                v.copy_(&(Tensor::rand(&n[..], opts) + 0.5));
            } else if name.contains("features") && n.len() == 1 && name.ends_with("bias") {
                let _ = v.normal_(0.0, 0.1);
            } else if !name.contains("features") && name.ends_with("weight") {
                let fan_in = *n.last().unwrap() as f64;
                let _ = v.normal_(0.0, 2.0 / fan_in.sqrt());
            } else if !name.contains("features") && name.ends_with("bias") {
                let _ = v.normal_(0.0, 0.1);
            }
        }
    });
}

/// Scale the last classifier layer (`PREFIXclassifier.3`) so `logits` spread about 1 and
/// the tolerance means the same for every model; returns the rescaled logits.
fn unit_spread(vs: &nn::VarStore, prefix: &str, logits: &Tensor) -> Tensor {
    let spread = logits.std(true).double_value(&[]);
    tch::no_grad(|| {
        for leaf in ["weight", "bias"] {
            let mut v = vs.variables()[&format!("{prefix}classifier.3.{leaf}")].shallow_clone();
            let _ = v.g_div_scalar_(spread);
        }
    });
    logits / spread
}

fn write(dir: &Path, case: &str, onnx: &[u8], inputs: &[(&str, &Tensor)]) {
    std::fs::write(dir.join(format!("{case}.onnx")), onnx).unwrap();
    let tensors: Vec<(String, Tensor)> = inputs
        .iter()
        .map(|(k, t)| (k.to_string(), t.shallow_clone()))
        .collect();
    checkpoint::write(
        &dir.join(format!("{case}.inputs.safetensors")),
        &tensors,
        &Default::default(),
    )
    .unwrap();
}

fn ort_outputs(dir: &Path, case: &str) -> BTreeMap<String, Tensor> {
    checkpoint::read(&dir.join(format!("{case}.ort.safetensors")))
        .unwrap()
        .0
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}

#[test]
fn onnx_runtime_gives_our_outputs_at_any_batch() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("onnx");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    tch::manual_seed(0);
    let mut expected: Vec<(String, BTreeMap<&str, Tensor>)> = Vec::new();
    for preset in ["basisnet-fashion", "basisnet-mv3"] {
        let config = presets::get(preset).unwrap();
        let vs = nn::VarStore::new(Device::Cpu);
        let net = BasisNet::new(&vs.root(), config).unwrap();
        randomize(&vs);
        let side = config.resolution;
        let probe = Tensor::randn(
            [8, config.specialist.in_channels, side, side],
            (Kind::Float, Device::Cpu),
        );
        tch::no_grad(|| {
            let light = net
                .lightweight()
                .forward_t(&net.lightweight_input(&probe).unwrap(), false)
                .unwrap();
            let _ = unit_spread(&vs, "lightweight.", &light.logits);
            let logits = net
                .specialist()
                .forward_t(&probe, &light.coefficients, false)
                .unwrap();
            let _ = unit_spread(&vs, "specialist.", &logits);
        });
        let graphs = net
            .to_onnx(OPSET, SpecialistForm::Scan, &BTreeMap::new())
            .unwrap();
        let batched = net
            .to_onnx(OPSET, SpecialistForm::Batched, &BTreeMap::new())
            .unwrap()
            .specialist;
        for batch in [1, 7] {
            let c = config.specialist.in_channels;
            let images = Tensor::randn(
                [batch, c, config.resolution, config.resolution],
                (Kind::Float, Device::Cpu),
            );
            let light = net.lightweight_input(&images).unwrap();
            let light_out = tch::no_grad(|| net.lightweight().forward_t(&light, false).unwrap());
            let coefficients = Tensor::stack(&light_out.coefficients, 1);
            // The specialist takes sharper coefficients than a random lightweight model gives.
            let n = config.basis.num_bases;
            let sharp = (Tensor::randn([batch, 1, n], (Kind::Float, Device::Cpu)) * 2.0)
                .softmax(-1, Kind::Float);
            let logits = tch::no_grad(|| {
                net.specialist()
                    .forward_t(&images, &[sharp.select(1, 0)], false)
                    .unwrap()
            });
            println!(
                "{preset} b{batch}: logits spread {:.3} and {:.3}, coefficients from {:.3} to {:.3}",
                light_out.logits.std(true).double_value(&[]),
                logits.std(true).double_value(&[]),
                coefficients.min().double_value(&[]),
                coefficients.max().double_value(&[])
            );
            let case = format!("{preset}-b{batch}");
            // Batch 7 runs the very files written for batch 1: one graph, any batch.
            write(
                &dir,
                &format!("{case}-lightweight"),
                &graphs.lightweight,
                &[("images", &light)],
            );
            // Both forms of the specialist.
            for (form, graph) in [("scan", &graphs.specialist), ("batched", &batched)] {
                write(
                    &dir,
                    &format!("{case}-specialist-{form}"),
                    graph,
                    &[("images", &images), ("coefficients", &sharp)],
                );
                expected.push((
                    format!("{case}-specialist-{form}"),
                    BTreeMap::from([("logits", logits.shallow_clone())]),
                ));
            }
            expected.push((
                format!("{case}-lightweight"),
                BTreeMap::from([("logits", light_out.logits), ("coefficients", coefficients)]),
            ));
        }
    }
    // A static MobileNetV3-Large: the same weights in torchvision.
    let config = MobileNetConfig::new(Arch::MobilenetV3Large);
    let vs = nn::VarStore::new(Device::Cpu);
    let net = MobileNet::new(&vs.root(), config, BasisSpec::fixed()).unwrap();
    randomize(&vs);
    let images = Tensor::randn([3, 3, 224, 224], (Kind::Float, Device::Cpu));
    let logits = tch::no_grad(|| net.forward_t(&images, &[], false).unwrap());
    let logits = unit_spread(&vs, "", &logits);
    write(
        &dir,
        "static-mv3-large",
        &net.to_onnx(224, OPSET).unwrap(),
        &[("images", &images)],
    );
    let metadata = BTreeMap::from([
        ("arch".to_string(), "mobilenet_v3_large".to_string()),
        ("classes".to_string(), "1000".to_string()),
    ]);
    checkpoint::save(
        &vs,
        &dir.join("static-mv3-large.torchvision.safetensors"),
        &metadata,
    )
    .unwrap();
    expected.push((
        "static-mv3-large".into(),
        BTreeMap::from([("logits", logits)]),
    ));

    println!("{}", common::python("onnx_check.py", &[dir.as_os_str()]));
    for (case, outputs) in &expected {
        let ort = ort_outputs(&dir, case);
        for (name, ours) in outputs {
            let diff = max_diff(ours, &ort[*name]);
            println!("{case} {name}: max |ours - ONNX Runtime| = {diff:.3e}");
            assert!(diff <= TOLERANCE, "{case} {name}: {diff:.3e}");
        }
    }
    let ort = ort_outputs(&dir, "static-mv3-large");
    let diff = max_diff(&ort["logits"], &ort["torchvision_logits"]);
    println!("static-mv3-large: max |ONNX Runtime - torchvision| = {diff:.3e}");
    assert!(diff <= TOLERANCE, "{diff:.3e}");
}
