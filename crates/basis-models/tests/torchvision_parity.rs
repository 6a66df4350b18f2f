//! Parity with torchvision 0.28 both ways, through `scripts/torchvision_parity.py` and the
//! PyTorch that `cargo xtask setup` installed: torchvision weights saved as safetensors
//! load here and give the same logits within 1e-4; weights saved here load into
//! torchvision (strict) and give the same logits.

mod common;

use basis_models::{checkpoint, Arch, BasisSpec, Layout, MobileNet, MobileNetConfig};
use std::path::{Path, PathBuf};
use tch::{nn, Device, Kind, Tensor};

const TOLERANCE: f64 = 1e-4;

/// `python3 scripts/torchvision_parity.py MODE DIR`.
fn python(mode: &str, dir: &Path) -> String {
    common::python("torchvision_parity.py", &[mode.as_ref(), dir.as_os_str()])
}

/// `arch-width-classes-resolution`.
fn parse(case: &str) -> (MobileNetConfig, i64) {
    let parts: Vec<&str> = case.split('-').collect();
    let config = MobileNetConfig::new(Arch::from_name(parts[0]).unwrap())
        .width(parts[1].parse().unwrap())
        .classes(parts[2].parse().unwrap());
    (config, parts[3].parse().unwrap())
}

fn cases(dir: &Path) -> Vec<String> {
    let mut cases: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().to_string();
            name.strip_suffix(".weights.safetensors")
                .map(str::to_string)
        })
        .collect();
    cases.sort();
    cases
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn torchvision_weights_give_the_same_logits_here_and_ours_in_torchvision() {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("torchvision-parity");
    let (from_tv, to_tv) = (root.join("from-torchvision"), root.join("to-torchvision"));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&to_tv).unwrap();
    python("export", &from_tv);
    let cases = cases(&from_tv);
    assert_eq!(cases.len(), 6, "{cases:?}");

    for (i, case) in cases.iter().enumerate() {
        let (config, _) = parse(case);
        // torchvision -> here, in both activation layouts.
        let vs = nn::VarStore::new(Device::Cpu);
        let mut net = MobileNet::new(&vs.root(), config, BasisSpec::fixed()).unwrap();
        checkpoint::load(&vs, &from_tv.join(format!("{case}.weights.safetensors"))).unwrap();
        let (io, _) = checkpoint::read(&from_tv.join(format!("{case}.io.safetensors"))).unwrap();
        for layout in [Layout::ChannelsLast, Layout::Contiguous] {
            net.set_layout(layout);
            let logits = net.forward_t(&io["input"], &[], false).unwrap();
            let diff = max_diff(&logits, &io["logits"]);
            assert!(
                diff <= TOLERANCE,
                "{case} ({layout:?}): logits differ from torchvision's by {diff:e}"
            );
        }

        // here -> torchvision: our own initialization, randomized statistics.
        tch::manual_seed(100 + i as i64);
        let vs = nn::VarStore::new(Device::Cpu);
        let net = MobileNet::new(&vs.root(), config, BasisSpec::fixed()).unwrap();
        tch::no_grad(|| {
            for (name, var) in vs.variables() {
                let mut var = var;
                if name.ends_with("running_mean") {
                    let _ = var.normal_(0.0, 0.1);
                } else if name.ends_with("running_var") {
                    let _ = var.uniform_(0.5, 1.5);
                } else if name.starts_with("classifier") {
                    let _ = var.normal_(0.0, 0.05);
                }
            }
        });
        let (_, resolution) = parse(case);
        let x = Tensor::randn([2, 3, resolution, resolution], (Kind::Float, Device::Cpu));
        let logits = net.forward_t(&x, &[], false).unwrap();
        checkpoint::save(
            &vs,
            &to_tv.join(format!("{case}.weights.safetensors")),
            &Default::default(),
        )
        .unwrap();
        checkpoint::write(
            &to_tv.join(format!("{case}.io.safetensors")),
            &[("input".into(), x), ("logits".into(), logits)],
            &Default::default(),
        )
        .unwrap();
    }
    let report = python("check", &to_tv);
    eprintln!("{report}");
    assert!(report.contains("all 6 cases within"), "{report}");
}
