//! Fused and frozen inference on whole networks: a MobileNet in evaluation gives the same
//! logits fused (one oneDNN pass per convolution), frozen (kernels folded and prepacked
//! once) and run apart as eager libtorch would, and a frozen pass after training picks up
//! the new weights and statistics. Its own test binary: freezing and the fusion switch are
//! process-wide.

use basis_core::{frozen, fused};
use basis_models::{Arch, BasisSpec, MobileNet, MobileNetConfig};
use tch::{nn, Device, Kind, Tensor};

const CPU: (Kind, Device) = (Kind::Float, Device::Cpu);

fn logits(net: &MobileNet, x: &Tensor) -> Tensor {
    tch::no_grad(|| net.forward_t(x, &[], false)).unwrap()
}

fn gap(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[]) / b.abs().max().double_value(&[])
}

#[test]
fn frozen_and_fused_networks_equal_the_layers_run_apart() {
    tch::manual_seed(3);
    for arch in [Arch::MobilenetV3Large, Arch::MobilenetV2] {
        let vs = nn::VarStore::new(Device::Cpu);
        let mut config = MobileNetConfig::new(arch).width(0.5).classes(10);
        config.batch_norm.momentum = 1.0;
        let net = MobileNet::new(&vs.root(), config, BasisSpec::fixed()).unwrap();
        let x = Tensor::randn([2, 3, 64, 64], CPU);
        // Batch-norm statistics from a batch, so evaluation is not near the identity.
        let _ = tch::no_grad(|| net.forward_t(&x, &[], true)).unwrap();

        fused::set_enabled(false);
        let apart = logits(&net, &x);
        fused::set_enabled(true);
        let fused = logits(&net, &x);
        assert!(
            apart.abs().max().double_value(&[]) > 1e-3,
            "{arch}: logits of size"
        );
        assert!(
            gap(&fused, &apart) < 1e-4,
            "{arch}: fused {}",
            gap(&fused, &apart)
        );
        let frozen = {
            let _guard = frozen::freeze();
            let first = logits(&net, &x);
            let second = logits(&net, &x);
            assert!(
                first.equal(&second),
                "{arch}: the packed kernels are reused as they are"
            );
            first
        };
        assert!(
            gap(&frozen, &apart) < 1e-4,
            "{arch}: frozen {}",
            gap(&frozen, &apart)
        );

        // Training between frozen passes: new statistics from another batch, then frozen
        // again equals the layers run apart with them.
        let other = Tensor::randn([2, 3, 64, 64], CPU) * 2.0 + 0.5;
        let _ = tch::no_grad(|| net.forward_t(&other, &[], true)).unwrap();
        fused::set_enabled(false);
        let apart_after = logits(&net, &x);
        fused::set_enabled(true);
        assert!(
            gap(&apart_after, &apart) > 1e-3,
            "{arch}: the statistics moved the logits"
        );
        let _guard = frozen::freeze();
        let frozen_after = logits(&net, &x);
        assert!(
            gap(&frozen_after, &apart_after) < 1e-4,
            "{arch}: frozen after training {}",
            gap(&frozen_after, &apart_after)
        );
    }
}
