//! A basis layer's bank with its batch norm folded in, kept while inference is frozen
//! (`basis_core::frozen`): the same numbers as folding on every call, a new fold when the
//! map, the weights (in a later generation) or the dtype change, and none when gradients
//! are needed.

use basis_core::{frozen, Activation, BasisConv2d, Conv2dGeometry, Strategy};
use std::sync::{Mutex, MutexGuard};
use tch::{nn, Device, Kind, Tensor};

const CPU: (Kind, Device) = (Kind::Float, Device::Cpu);

/// Freezing is process-wide and a new generation starts only once every guard is gone:
/// the tests of this file run one at a time.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

struct Case {
    vs: nn::VarStore,
    conv: BasisConv2d,
    x: Tensor,
    alpha: Tensor,
    scale: Tensor,
    shift: Tensor,
}

fn case(g: Conv2dGeometry, batch: i64, seed: i64) -> Case {
    tch::manual_seed(seed);
    let vs = nn::VarStore::new(Device::Cpu);
    let conv = BasisConv2d::new(&vs.root(), g, 4, true).unwrap();
    Case {
        x: Tensor::randn([batch, g.in_channels, 9, 9], CPU),
        alpha: Tensor::randn([batch, 4], CPU).softmax(-1, Kind::Float),
        scale: Tensor::rand([g.out_channels], CPU) + 0.5,
        shift: Tensor::randn([g.out_channels], CPU),
        vs,
        conv,
    }
}

fn run(c: &Case, scale: &Tensor) -> Tensor {
    tch::no_grad(|| {
        c.conv
            .forward_fused(
                &c.x,
                Some(&c.alpha),
                Some((scale, &c.shift)),
                Activation::Relu,
            )
            .unwrap()
    })
}

fn geometries() -> [Conv2dGeometry; 3] {
    [
        Conv2dGeometry::new(8, 12, 1),
        Conv2dGeometry::new(8, 8, 3).padding(1).groups(8),
        Conv2dGeometry::new(6, 10, 3).stride(2).padding(1),
    ]
}

#[test]
fn frozen_folds_equal_folding_every_call() {
    let _serial = serial();
    for (i, g) in geometries().into_iter().enumerate() {
        for batch in [1, 3] {
            let c = case(g, batch, i as i64);
            let plain = run(&c, &c.scale);
            let guard = frozen::freeze();
            for _ in 0..3 {
                let y = run(&c, &c.scale);
                assert!(y.allclose(&plain, 1e-6, 1e-6, false), "{g:?} batch {batch}");
            }
            // A different map folds again.
            let other = &c.scale * 2.0;
            let y = run(&c, &other);
            drop(guard);
            assert!(y.allclose(&run(&c, &other), 1e-6, 1e-6, false));
            assert!(!y.allclose(&plain, 1e-3, 1e-3, false));
        }
    }
}

#[test]
fn weights_changed_between_generations_are_picked_up() {
    let _serial = serial();
    let mut c = case(geometries()[0], 3, 5);
    let guard = frozen::freeze();
    let before = run(&c, &c.scale);
    // A change in place (training between two frozen passes, or a broken promise).
    tch::no_grad(|| {
        for (_, mut v) in c.vs.variables() {
            let _ = v.f_mul_scalar_(-1.5).unwrap();
        }
    });
    // Within the generation the fold is the one kept on the first call.
    assert!(run(&c, &c.scale).allclose(&before, 1e-6, 1e-6, false));
    drop(guard);
    let expected = run(&c, &c.scale);
    let guard = frozen::freeze();
    let after = run(&c, &c.scale);
    drop(guard);
    assert!(after.allclose(&expected, 1e-6, 1e-6, false));
    assert!(!after.allclose(&before, 1e-3, 1e-3, false));
    // A bf16 copy of the model folds in bf16.
    c.vs.bfloat16();
    let x16 = c.x.to_kind(Kind::BFloat16);
    let (scale16, shift16) = (
        c.scale.to_kind(Kind::BFloat16),
        c.shift.to_kind(Kind::BFloat16),
    );
    let run16 = |c: &Case| {
        tch::no_grad(|| {
            c.conv
                .forward_fused(
                    &x16,
                    Some(&c.alpha),
                    Some((&scale16, &shift16)),
                    Activation::Relu,
                )
                .unwrap()
        })
    };
    let plain16 = run16(&c);
    let guard = frozen::freeze();
    let frozen16 = run16(&c);
    drop(guard);
    assert_eq!(frozen16.kind(), Kind::BFloat16);
    assert!(frozen16.allclose(&plain16, 1e-6, 1e-6, false));
}

#[test]
fn gradients_reach_the_bank_while_frozen() {
    let _serial = serial();
    let c = case(geometries()[0], 3, 9);
    let conv = BasisConv2d::new(
        &c.vs.root().sub("grad"),
        Conv2dGeometry::new(8, 12, 1),
        4,
        true,
    )
    .unwrap()
    .with_strategy(Strategy::BatchedMatmul);
    let _guard = frozen::freeze();
    let y = conv
        .forward_affine(&c.x, &c.alpha, &c.scale, &c.shift)
        .unwrap();
    assert!(y.requires_grad());
    y.sum(Kind::Float).backward();
    let grads: Vec<Tensor> =
        c.vs.variables()
            .into_iter()
            .filter(|(name, _)| name.starts_with("grad"))
            .map(|(_, v)| v.grad())
            .collect();
    assert_eq!(grads.len(), 2, "the bank and its biases");
    for g in grads {
        assert!(g.defined() && g.abs().sum(Kind::Float).double_value(&[]) > 0.0);
    }
}
