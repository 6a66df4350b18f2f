//! Specialists, the lightweight model, BasisNet and early exit, checked against plain
//! static networks and against per-sample runs.

use basis_models::{
    checkpoint, presets, Arch, BasisLayers, BasisNet, BasisSpec, CoefficientScope, Layout,
    MobileNet, MobileNetConfig, ModelError, Stage,
};
use tch::{nn, Device, Kind, Tensor};

const CPU: (Kind, Device) = (Kind::Float, Device::Cpu);

/// Batch-norm momentum 1, so one training pass ([`calibrate`]) sets the running
/// statistics to the batch's and the untrained network's evaluation outputs depend on
/// the input (with PyTorch's init and unit statistics they barely do).
fn small() -> MobileNetConfig {
    let mut config = MobileNetConfig::new(Arch::MobilenetV3Small)
        .width(0.5)
        .in_channels(1)
        .classes(10);
    config.batch_norm.momentum = 1.0;
    config
}

fn calibrate(net: &MobileNet, x: &Tensor, coefficients: &[Tensor]) {
    let _ = tch::no_grad(|| net.forward_t(x, coefficients, true)).unwrap();
}

fn close(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// Random batch-norm statistics, so evaluation mode is not the identity.
fn randomize_statistics(vs: &nn::VarStore) {
    tch::no_grad(|| {
        for (name, mut var) in vs.variables() {
            if name.ends_with("running_mean") {
                let _ = var.normal_(0.0, 0.1);
            } else if name.ends_with("running_var") {
                let _ = var.uniform_(0.5, 1.5);
            }
        }
    });
}

#[test]
fn one_basis_is_the_static_network_same_names_same_outputs() {
    for arch in Arch::ALL {
        let config = MobileNetConfig::new(arch).width(0.5).classes(7);
        let fixed_vs = nn::VarStore::new(Device::Cpu);
        let fixed = MobileNet::new(&fixed_vs.root(), config, BasisSpec::fixed()).unwrap();
        let one_vs = nn::VarStore::new(Device::Cpu);
        let one = MobileNet::new(&one_vs.root(), config, BasisSpec::new(1)).unwrap();
        let shapes = |vs: &nn::VarStore| {
            let mut v: Vec<(String, Vec<i64>)> = vs
                .variables()
                .into_iter()
                .map(|(k, t)| (k, t.size()))
                .collect();
            v.sort();
            v
        };
        assert_eq!(shapes(&fixed_vs), shapes(&one_vs), "{arch}");
        assert_eq!(one.num_coefficient_vectors(), 0);
        randomize_statistics(&fixed_vs);
        let mut one_vs = one_vs;
        one_vs.copy(&fixed_vs).unwrap();
        let x = Tensor::randn([2, 3, 40, 40], CPU);
        let a = fixed.forward_t(&x, &[], false).unwrap();
        let b = one.forward_t(&x, &[], false).unwrap();
        assert!(a.equal(&b), "{arch}");
    }
}

#[test]
fn specialist_output_per_sample_equals_its_baked_static_network() {
    tch::manual_seed(1);
    let vs = nn::VarStore::new(Device::Cpu);
    let mut specialist = MobileNet::new(&vs.root(), small(), BasisSpec::new(4)).unwrap();
    let x = Tensor::randn([3, 1, 28, 28], CPU);
    let alpha = Tensor::rand([3, 4], CPU).softmax(-1, Kind::Float);
    calibrate(&specialist, &x, &[alpha.shallow_clone()]);
    let batched = specialist
        .forward_t(&x, &[alpha.shallow_clone()], false)
        .unwrap();
    // The outputs really depend on the sample.
    assert!(close(&batched.get(0), &batched.get(1)) > 1e-3);
    // Every activation layout computes the same.
    for layout in [Layout::ChannelsLast, Layout::Contiguous] {
        specialist.set_layout(layout);
        let y = specialist
            .forward_t(&x, &[alpha.shallow_clone()], false)
            .unwrap();
        assert!(close(&y, &batched) <= 1e-4, "{layout:?}");
    }
    specialist.set_layout(Layout::Auto);
    for b in 0..3 {
        let static_vs = nn::VarStore::new(Device::Cpu);
        let baked = specialist
            .specialize(&static_vs.root(), &[alpha.get(b)])
            .unwrap();
        assert_eq!(baked.num_coefficient_vectors(), 0);
        let single = baked.forward_t(&x.narrow(0, b, 1), &[], false).unwrap();
        let d = close(&single, &batched.narrow(0, b, 1));
        assert!(d <= 1e-4, "sample {b}: {d:e}");
    }
    // The baked network is torchvision-shaped: it loads into a plain static network.
    let static_vs = nn::VarStore::new(Device::Cpu);
    let baked = specialist
        .specialize(&static_vs.root(), &[alpha.get(0)])
        .unwrap();
    let file = std::env::temp_dir().join(format!("baked-{}.safetensors", std::process::id()));
    checkpoint::save(&static_vs, &file, &Default::default()).unwrap();
    let plain_vs = nn::VarStore::new(Device::Cpu);
    let plain = MobileNet::new(&plain_vs.root(), small(), BasisSpec::fixed()).unwrap();
    checkpoint::load(&plain_vs, &file).unwrap();
    std::fs::remove_file(&file).unwrap();
    let x0 = x.narrow(0, 0, 1);
    assert!(
        close(
            &plain.forward_t(&x0, &[], false).unwrap(),
            &baked.forward_t(&x0, &[], false).unwrap()
        ) == 0.0
    );
}

#[test]
fn bases_seeded_from_a_static_network_reproduce_it() {
    let fixed_vs = nn::VarStore::new(Device::Cpu);
    let fixed = MobileNet::new(&fixed_vs.root(), small(), BasisSpec::fixed()).unwrap();
    let x = Tensor::randn([4, 1, 28, 28], CPU);
    calibrate(&fixed, &x, &[]);
    let vs = nn::VarStore::new(Device::Cpu);
    let specialist = MobileNet::new(&vs.root(), small(), BasisSpec::new(4)).unwrap();
    specialist.seed_from(&fixed, 0.0).unwrap();
    let alpha = Tensor::rand([4, 4], CPU).softmax(-1, Kind::Float);
    let a = fixed.forward_t(&x, &[], false).unwrap();
    let b = specialist
        .forward_t(&x, &[alpha.shallow_clone()], false)
        .unwrap();
    assert!(close(&a, &b) <= 1e-4);
    // With noise the bases differ, by about the asked fraction of each weight's spread.
    specialist.seed_from(&fixed, 0.05).unwrap();
    let c = specialist.forward_t(&x, &[alpha], false).unwrap();
    assert!(close(&a, &c) > 1e-4);
    let other_vs = nn::VarStore::new(Device::Cpu);
    let other = MobileNet::new(&other_vs.root(), small().width(1.0), BasisSpec::fixed()).unwrap();
    assert!(specialist.seed_from(&other, 0.0).is_err());
}

#[test]
fn basis_layers_and_scopes_choose_what_holds_bases() {
    let count_banks = |spec: BasisSpec| {
        let vs = nn::VarStore::new(Device::Cpu);
        let net = MobileNet::new(
            &vs.root(),
            MobileNetConfig::new(Arch::MobilenetV3Large),
            spec,
        )
        .unwrap();
        let banks = vs
            .variables()
            .iter()
            .filter(|(k, t)| k.ends_with("weight") && t.size()[0] == spec.num_bases && t.dim() >= 3)
            .count();
        (banks, net.num_coefficient_vectors())
    };
    // Every conv (16 + 15 blocks' convs + 8 SE pairs) and both classifier layers.
    let (all, vectors) = count_banks(BasisSpec::new(3));
    assert_eq!(vectors, 1);
    let (pointwise, _) = count_banks(BasisSpec::new(3).layers(BasisLayers::Pointwise));
    // Depthwise convs (15) and the 3x3 stem stay static.
    assert_eq!(all - pointwise, 16);
    let (last, _) = count_banks(BasisSpec::new(3).layers(BasisLayers::LastStages(1)));
    assert!(last < pointwise && last > 3, "{last}");
    let (_, per_block) = count_banks(BasisSpec::new(3).scope(CoefficientScope::PerBlock));
    // stem, 15 blocks, last conv, classifier
    assert_eq!(per_block, 18);
    let vs = nn::VarStore::new(Device::Cpu);
    let net = MobileNet::new(
        &vs.root(),
        small(),
        BasisSpec::new(2).scope(CoefficientScope::PerBlock),
    )
    .unwrap();
    let x = Tensor::randn([2, 1, 28, 28], CPU);
    let vectors: Vec<Tensor> = (0..net.num_coefficient_vectors())
        .map(|_| Tensor::rand([2, 2], CPU))
        .collect();
    assert_eq!(net.forward_t(&x, &vectors, false).unwrap().size(), [2, 10]);
    let err = net.forward_t(&x, &vectors[1..], false).unwrap_err();
    assert!(
        matches!(err, ModelError::CoefficientVectors { .. }),
        "{err}"
    );
}

#[test]
fn early_exit_runs_the_specialist_only_on_the_unsure() {
    tch::manual_seed(3);
    let vs = nn::VarStore::new(Device::Cpu);
    // Batch-norm momentum 1: one training pass sets the running statistics to the batch's,
    // so the untrained network's evaluation outputs depend on the input.
    let mut config = presets::get("basisnet-fashion").unwrap();
    config.lightweight.batch_norm.momentum = 1.0;
    config.specialist.batch_norm.momentum = 1.0;
    let net = BasisNet::new(&vs.root(), config).unwrap();
    // Spread the untrained classifier's logits so confidences differ between samples.
    tch::no_grad(|| {
        for (name, mut var) in vs.variables() {
            if name.starts_with("lightweight.classifier") {
                let _ = var.normal_(0.0, 0.5);
            }
        }
    });
    let images = Tensor::rand([8, 1, 28, 28], CPU);
    let _ = tch::no_grad(|| net.forward_t(&net.lightweight_input(&images).unwrap(), &images, true))
        .unwrap();
    let light_images = net.lightweight_input(&images).unwrap();
    assert_eq!(light_images.size(), [8, 1, 20, 20]);
    let full = tch::no_grad(|| net.forward_t(&light_images, &images, false)).unwrap();
    let p = net.profile();
    let (light_madds, all_madds) = (p.lightweight_stage_madds(), p.total_madds());

    // Everybody exits.
    let out = net.early_exit(&light_images, &images, 0.0).unwrap();
    assert!(out.stages.iter().all(|s| *s == Stage::Lightweight));
    assert!(out.logits.equal(&full.light_logits));
    assert_eq!(out.madds, vec![light_madds; 8]);
    // Nobody exits (a probability never exceeds 1).
    let out = net.early_exit(&light_images, &images, 1.0 + 1e-9).unwrap();
    assert!(out.stages.iter().all(|s| *s == Stage::Specialist));
    assert!(close(&out.logits, &full.specialist_logits) <= 1e-5);
    assert_eq!(out.madds, vec![all_madds; 8]);
    // A threshold between: the split follows the confidences exactly.
    let confidence = full
        .light_logits
        .softmax(-1, Kind::Float)
        .amax([-1].as_slice(), false);
    let conf: Vec<f32> = Vec::try_from(&confidence).unwrap();
    let mut sorted = conf.clone();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let threshold = f64::from(sorted[4]);
    let out = net.early_exit(&light_images, &images, threshold).unwrap();
    for (i, &c) in conf.iter().enumerate() {
        let exits = f64::from(c) >= threshold;
        let expected = if exits {
            full.light_logits.get(i as i64)
        } else {
            full.specialist_logits.get(i as i64)
        };
        assert_eq!(out.stages[i] == Stage::Lightweight, exits);
        // The specialist ran on a sub-batch: other kernels, other rounding. Relative to
        // the logits' size (untrained batch norm with 8-sample statistics spreads them).
        let scale = expected.abs().max().double_value(&[]).max(1.0);
        let gap = close(&out.logits.get(i as i64), &expected);
        assert!(
            gap <= 1e-5 * scale,
            "sample {i}: gap {gap} at scale {scale}"
        );
        assert_eq!(out.madds[i], if exits { light_madds } else { all_madds });
    }
    assert!(out.stages.contains(&Stage::Lightweight) && out.stages.contains(&Stage::Specialist));
    assert!(net.early_exit(&light_images, &images, f64::NAN).is_err());
}

#[test]
fn lightweight_coefficients_are_softmax_rows() {
    let vs = nn::VarStore::new(Device::Cpu);
    let mut config = presets::get("basisnet-fashion").unwrap();
    config.temperature = 2.0;
    let net = BasisNet::new(&vs.root(), config).unwrap();
    let images = Tensor::rand([5, 1, 28, 28], CPU);
    let out = net
        .forward_t(&net.lightweight_input(&images).unwrap(), &images, true)
        .unwrap();
    assert_eq!(out.coefficients.len(), 1);
    let sums = out.coefficients[0].sum_dim_intlist(-1, false, Kind::Float);
    assert!(close(&sums, &Tensor::ones([5], CPU)) <= 1e-5);
    assert_eq!(out.light_logits.size(), [5, 10]);
    let vars = vs.variables();
    assert_eq!(vars["lightweight.coefficient_head.weight"].size(), [4, 288]);
    assert!(vars.contains_key("specialist.features.0.0.weight"));
}

#[test]
fn bad_input_is_a_clear_error() {
    let vs = nn::VarStore::new(Device::Cpu);
    let net = MobileNet::new(&vs.root(), small(), BasisSpec::fixed()).unwrap();
    let err = net
        .forward_t(&Tensor::zeros([1, 3, 28, 28], CPU), &[], false)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "images: expected 1 channels, found 3 channels"
    );
    let err = net
        .forward_t(&Tensor::zeros([1, 1, 12, 12], CPU), &[], false)
        .unwrap_err();
    assert!(err.to_string().contains("at least 17 px"), "{err}");
    assert!(MobileNet::new(&vs.root(), small().width(0.0), BasisSpec::fixed()).is_err());
    assert!(BasisNet::new(&vs.root(), {
        let mut c = presets::get("basisnet-fashion").unwrap();
        c.basis = BasisSpec::fixed();
        c
    })
    .is_err());
}

#[test]
fn checkpoints_of_another_model_are_refused_and_change_nothing() {
    let dir = std::env::temp_dir().join(format!("ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let v2_vs = nn::VarStore::new(Device::Cpu);
    MobileNet::new(
        &v2_vs.root(),
        MobileNetConfig::new(Arch::MobilenetV2)
            .width(0.5)
            .in_channels(1)
            .classes(10),
        BasisSpec::fixed(),
    )
    .unwrap();
    let v2 = dir.join("v2.safetensors");
    checkpoint::save(&v2_vs, &v2, &Default::default()).unwrap();

    let vs = nn::VarStore::new(Device::Cpu);
    MobileNet::new(&vs.root(), small(), BasisSpec::fixed()).unwrap();
    let before: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(k, t)| (k, t.copy()))
        .collect();
    let err = checkpoint::load(&vs, &v2).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!("checkpoint {}: tensor ", v2.display())),
        "{err}"
    );

    // Same architecture, another width: the first differing tensor is named with shapes.
    let wide_vs = nn::VarStore::new(Device::Cpu);
    MobileNet::new(&wide_vs.root(), small().width(1.0), BasisSpec::fixed()).unwrap();
    let wide = dir.join("wide.safetensors");
    checkpoint::save(&wide_vs, &wide, &Default::default()).unwrap();
    let err = checkpoint::load(&vs, &wide).unwrap_err().to_string();
    assert!(
        err.contains("has shape [") && err.contains("the model expects ["),
        "{err}"
    );

    // A missing tensor, an extra tensor.
    let mut tensors: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    tensors.retain(|(k, _)| k != "features.1.block.0.0.weight");
    let missing = dir.join("missing.safetensors");
    checkpoint::write(&missing, &tensors, &Default::default()).unwrap();
    let err = checkpoint::load(&vs, &missing).unwrap_err().to_string();
    assert!(
        err.ends_with("tensor features.1.block.0.0.weight is missing"),
        "{err}"
    );
    tensors = vs.variables().into_iter().collect();
    tensors.push(("features.99.weight".into(), Tensor::zeros([2], CPU)));
    let extra = dir.join("extra.safetensors");
    checkpoint::write(&extra, &tensors, &Default::default()).unwrap();
    let err = checkpoint::load(&vs, &extra).unwrap_err().to_string();
    assert!(
        err.ends_with("tensor features.99.weight is not part of this model"),
        "{err}"
    );
    // Not a safetensors file at all.
    let junk = dir.join("junk.safetensors");
    std::fs::write(&junk, b"hello").unwrap();
    assert!(checkpoint::load(&vs, &junk)
        .unwrap_err()
        .to_string()
        .contains("not a safetensors file"));
    // A header whose shape overflows (or is negative) is refused, not multiplied out.
    for shape in ["[4294967296, 4294967296, 16]", "[-1, 8]"] {
        let header = format!(r#"{{"w":{{"dtype":"F32","shape":{shape},"data_offsets":[0,4]}}}}"#);
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend(header.as_bytes());
        bytes.extend([0u8; 4]);
        let odd = dir.join("odd-shape.safetensors");
        std::fs::write(&odd, &bytes).unwrap();
        let err = checkpoint::read(&odd).unwrap_err().to_string();
        assert!(err.contains("tensor w has an impossible shape"), "{err}");
    }
    // A header length past the end of the file.
    let mut bytes = u64::MAX.to_le_bytes().to_vec();
    bytes.extend(b"{}");
    std::fs::write(&junk, &bytes).unwrap();
    assert!(checkpoint::read(&junk)
        .unwrap_err()
        .to_string()
        .contains("not a safetensors file"));

    // Nothing was overwritten by the failed loads.
    let after = vs.variables();
    for (k, t) in before {
        assert!(after[&k].equal(&t), "{k} changed");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn basisnet_checkpoints_name_the_configuration_they_came_from() {
    let dir = std::env::temp_dir().join(format!("basisnet-ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("mv2.safetensors");
    let vs = nn::VarStore::new(Device::Cpu);
    let mv2 = BasisNet::new(&vs.root(), presets::get("basisnet-fashion-mv2").unwrap()).unwrap();
    mv2.save(&vs, &file).unwrap();
    // The same configuration round-trips.
    let again_vs = nn::VarStore::new(Device::Cpu);
    let again = BasisNet::new(&again_vs.root(), *mv2.config()).unwrap();
    again.load(&again_vs, &file).unwrap();
    let name = "specialist.features.1.conv.0.0.weight";
    assert!(again_vs.variables()[name].equal(&vs.variables()[name]));
    // Another preset is refused with both descriptions.
    let other_vs = nn::VarStore::new(Device::Cpu);
    let other = BasisNet::new(&other_vs.root(), presets::get("basisnet-fashion").unwrap()).unwrap();
    let err = other.load(&other_vs, &file).unwrap_err().to_string();
    assert!(
        err.contains("saved from a BasisNet of lightweight mobilenet_v3_small 0.5 at 20 px, specialist mobilenet_v2 0.5 at 28 px, N = 4")
            && err.contains("this model is lightweight mobilenet_v3_small 0.5 at 20 px, specialist mobilenet_v3_small 1 at 28 px"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_static_checkpoint_seeds_a_specialist() {
    let file = std::env::temp_dir().join(format!("seed-{}.safetensors", std::process::id()));
    let fixed_vs = nn::VarStore::new(Device::Cpu);
    let fixed = MobileNet::new(&fixed_vs.root(), small(), BasisSpec::fixed()).unwrap();
    let x = Tensor::randn([8, 1, 28, 28], CPU);
    calibrate(&fixed, &x, &[]);
    checkpoint::save(&fixed_vs, &file, &Default::default()).unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let specialist = MobileNet::new(&vs.root(), small(), BasisSpec::new(3)).unwrap();
    specialist.seed_from_checkpoint(&file, 0.0).unwrap();
    std::fs::remove_file(&file).unwrap();
    let alpha = Tensor::rand([8, 3], CPU).softmax(-1, Kind::Float);
    let expected = fixed.forward_t(&x, &[], false).unwrap();
    let d = close(
        &expected,
        &specialist.forward_t(&x, &[alpha], false).unwrap(),
    );
    let scale = expected.abs().max().double_value(&[]).max(1.0);
    assert!(d <= 1e-4 * scale, "{d:e} (logits up to {scale})");
    assert!(specialist
        .seed_from_checkpoint(std::path::Path::new("/nonexistent.safetensors"), 0.0)
        .unwrap_err()
        .to_string()
        .starts_with("/nonexistent.safetensors: "));
}

#[test]
fn stem_stride_one_keeps_the_variables_and_quadruples_the_spatial_cost() {
    let strided = MobileNetConfig::new(Arch::MobilenetV3Small)
        .in_channels(1)
        .classes(10);
    let small_image = strided.stem_stride(1);
    let (a, b) = (
        nn::VarStore::new(Device::Cpu),
        nn::VarStore::new(Device::Cpu),
    );
    let net2 = MobileNet::new(&a.root(), strided, BasisSpec::fixed()).unwrap();
    let net1 = MobileNet::new(&b.root(), small_image, BasisSpec::fixed()).unwrap();
    // Same variables, same shapes: weights move between the two.
    let shapes = |vs: &nn::VarStore| {
        let mut v: Vec<(String, Vec<i64>)> = vs
            .variables()
            .into_iter()
            .map(|(n, t)| (n, t.size()))
            .collect();
        v.sort();
        v
    };
    assert_eq!(shapes(&a), shapes(&b));
    // At 28 px the stride-1 stem sees every pixel: the stem costs 4x (28^2 vs 14^2
    // outputs), and the network takes inputs down to 9 px instead of 17.
    let (p2, p1) = (net2.profile(28).unwrap(), net1.profile(28).unwrap());
    assert_eq!(p1.layers[0].madds, 4 * p2.layers[0].madds);
    // Every feature map of the stride-1 stem at 28 px is that of the stride-2 stem at
    // 56 px, so the costs agree exactly: 4,934,688 against 2,064,144 MAdds.
    assert_eq!(p1.total.madds, net2.profile(56).unwrap().total.madds);
    assert_eq!((p1.total.madds, p2.total.madds), (4_934_688, 2_064_144));
    assert_eq!(p1.total.params, p2.total.params);
    assert_eq!((net2.min_resolution(), net1.min_resolution()), (17, 9));
    let x = Tensor::randn([2, 1, 28, 28], CPU);
    assert_eq!(net1.forward_t(&x, &[], false).unwrap().size(), [2, 10]);
    // Anything but 1 or 2 is refused in one sentence.
    let vs = nn::VarStore::new(Device::Cpu);
    let err = MobileNet::new(&vs.root(), strided.stem_stride(3), BasisSpec::fixed()).unwrap_err();
    assert!(
        err.to_string()
            .contains("stem stride must be 1 or 2, found 3"),
        "{err}"
    );
    // Configurations saved before the field existed read as torchvision's stride 2.
    let mut json: serde_json::Value = serde_json::to_value(strided).unwrap();
    json.as_object_mut().unwrap().remove("stem_stride");
    let old: MobileNetConfig = serde_json::from_value(json).unwrap();
    assert_eq!(old.stem_stride, 2);
}

/// The other replica of a simulated pair: its per-channel sums arrive as constants.
struct OtherReplica(Tensor);

impl basis_models::ReplicaSum for OtherReplica {
    fn replica_sum(&self, x: &Tensor) -> std::result::Result<Tensor, String> {
        Ok(x + &self.0)
    }
}

#[test]
fn synchronized_batch_norm_normalizes_over_every_replicas_batch() {
    use basis_models::{with_synchronized_batch_norm, BatchNorm2d, BatchNormSpec};
    let spec = BatchNormSpec {
        eps: 1e-5,
        momentum: 0.1,
    };
    let (vs_sync, vs_plain) = (
        nn::VarStore::new(Device::Cpu),
        nn::VarStore::new(Device::Cpu),
    );
    let synced = BatchNorm2d::new(&vs_sync.root(), 3, spec).unwrap();
    let plain = BatchNorm2d::new(&vs_plain.root(), 3, spec).unwrap();
    let x = Tensor::randn([8, 3, 5, 5], (Kind::Float, Device::Cpu)) * 2.0 + 1.0;
    // This replica holds images 0..3, the other 3..8 (unequal parts, as a last batch).
    let (mine, theirs) = (x.narrow(0, 0, 3), x.narrow(0, 3, 5));
    let dims: &[i64] = &[0, 2, 3];
    let their_stats = Tensor::cat(
        &[
            theirs.sum_dim_intlist(dims, false, Kind::Float),
            theirs.square().sum_dim_intlist(dims, false, Kind::Float),
            Tensor::from_slice(&[125.0f32]),
        ],
        0,
    );
    let y = with_synchronized_batch_norm(std::rc::Rc::new(OtherReplica(their_stats)), || {
        synced.forward_t(&mine, true)
    })
    .unwrap();
    let union = plain.forward_t(&x, true).unwrap();
    assert!(
        close(&y, &union.narrow(0, 0, 3)) < 1e-4,
        "normalized over the union"
    );
    let (a, b) = (vs_sync.variables(), vs_plain.variables());
    for name in ["running_mean", "running_var", "num_batches_tracked"] {
        let d = (a[name].to_kind(Kind::Double) - b[name].to_kind(Kind::Double))
            .abs()
            .max()
            .double_value(&[]);
        assert!(d < 1e-5, "{name}: {d} from batch norm over the union");
    }
    // Outside the scope, and in evaluation, batch norm is its plain self again.
    let again = synced.forward_t(&x, false).unwrap();
    assert!(close(&again, &plain.forward_t(&x, false).unwrap()) < 1e-5);
}

/// `basisnet benchmark --precision bf16` runs the benchmark models with bf16 weights and
/// input. Their logits stay within 2% (relative L2; 0.6-0.7% measured) of fp32's on the same weights, and
/// at least 7 of 8 images keep their class. Batch-norm statistics are random (as trained
/// ones are), so evaluation mode is not near the identity.
#[test]
fn bf16_logits_of_the_benchmark_models_stay_close_to_fp32() {
    for model in ["mobilenet-v3-large", "basisnet-mv3"] {
        tch::manual_seed(3);
        let mut vs = nn::VarStore::new(Device::Cpu);
        let run: Box<dyn Fn(&Tensor) -> Tensor> = if model == "basisnet-mv3" {
            let net = BasisNet::new(&vs.root(), presets::get(model).unwrap()).unwrap();
            Box::new(move |x: &Tensor| {
                let light = net.lightweight_input(x).unwrap();
                net.forward_t(&light, x, false).unwrap().specialist_logits
            })
        } else {
            let config = MobileNetConfig::new(Arch::MobilenetV3Large);
            let net = MobileNet::new(&vs.root(), config, BasisSpec::fixed()).unwrap();
            Box::new(move |x: &Tensor| net.forward_t(x, &[], false).unwrap())
        };
        randomize_statistics(&vs);
        let images = Tensor::randn([8, 3, 224, 224], CPU);
        // Untrained, the classifier's small init leaves every logit near zero: scale its
        // last layer so the logits spread with a standard deviation of 4, as a trained
        // model's do (what the benchmark does for its early-exit model).
        let spread = tch::no_grad(|| run(&images)).std(true).double_value(&[]);
        tch::no_grad(|| {
            for (name, mut var) in vs.variables() {
                if name.contains("classifier.3.") && !name.starts_with("lightweight.") {
                    let _ = var.f_mul_scalar_(4.0 / spread.max(1e-12)).unwrap();
                }
            }
        });
        let fp32 = tch::no_grad(|| run(&images));
        vs.bfloat16();
        let bf16 = tch::no_grad(|| run(&images.to_kind(Kind::BFloat16))).to_kind(Kind::Float);
        assert_eq!(bf16.size(), [8, 1000], "{model}");
        let relative = ((&bf16 - &fp32).norm().double_value(&[])
            / fp32.norm().double_value(&[]).max(1e-12))
        .abs();
        let spread = fp32.std(true).double_value(&[]);
        let same_class = bf16
            .argmax(-1, false)
            .eq_tensor(&fp32.argmax(-1, false))
            .to_kind(Kind::Float)
            .mean(Kind::Float)
            .double_value(&[]);
        eprintln!(
            "{model}: relative L2 {relative:.4}, logit spread {spread:.3}, same class {same_class}"
        );
        assert!(
            (spread - 4.0).abs() < 0.1,
            "{model}: fp32 logits spread {spread}"
        );
        assert!(
            relative < 0.02,
            "{model}: bf16 logits {relative:.4} (relative L2) from fp32"
        );
        assert!(
            same_class >= 0.875,
            "{model}: {same_class} of the images keep their class in bf16"
        );
    }
}
