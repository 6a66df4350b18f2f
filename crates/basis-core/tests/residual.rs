//! A residual block's projection with its residual added in the same oneDNN pass
//! (`BasisConv2d::forward_fused_add`): the same numbers as the layer, its folded batch norm
//! and the add run apart, in both layouts, frozen or not, fp32 and bf16 autocast, static and
//! basis layers; in place into the residual where the fused op runs, never when gradients
//! are needed.

use basis_amp::{autocast, Precision};
use basis_core::{frozen, to_channels_last, BasisConv2d, Conv2dGeometry, Strategy};
use tch::{nn, Device, Kind, Tensor};

const CPU: (Kind, Device) = (Kind::Float, Device::Cpu);

/// A projection `cin -> cout` (1x1, or a 3x3 as some residual networks have), its
/// batch-norm map, an input and a residual.
struct Case {
    _vs: nn::VarStore,
    conv: BasisConv2d,
    scale: Tensor,
    shift: Tensor,
    x: Tensor,
    residual: Tensor,
}

fn case(g: Conv2dGeometry, bases: i64, seed: i64) -> Case {
    tch::manual_seed(seed);
    let vs = nn::VarStore::new(Device::Cpu);
    let conv = BasisConv2d::new(&vs.root(), g, bases, false).unwrap();
    Case {
        _vs: vs,
        conv,
        scale: Tensor::rand([g.out_channels], CPU) + 0.5,
        shift: Tensor::randn([g.out_channels], CPU) * 0.5,
        x: Tensor::randn([3, g.in_channels, 10, 10], CPU) * 2.0,
        residual: Tensor::randn([3, g.out_channels, 10, 10], CPU),
    }
}

fn geometries() -> [Conv2dGeometry; 2] {
    [
        Conv2dGeometry::new(72, 24, 1),
        Conv2dGeometry::new(16, 16, 3).padding(1),
    ]
}

fn gap(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(Kind::Float) - b.to_kind(Kind::Float))
        .abs()
        .max()
        .double_value(&[])
}

#[test]
fn static_projection_adds_its_residual_in_place_where_fused() {
    for (i, g) in geometries().into_iter().enumerate() {
        let c = case(g, 1, i as i64);
        let affine = Some((&c.scale, &c.shift));
        let want = tch::no_grad(|| {
            c.conv
                .forward_static_affine(&c.x, &c.scale, &c.shift)
                .unwrap()
                + &c.residual
        });
        for frozen_pass in [false, true] {
            let _guard = frozen_pass.then(frozen::freeze);
            for channels_last in [false, true] {
                let layout = |t: &Tensor| {
                    if channels_last {
                        to_channels_last(t).unwrap()
                    } else {
                        t.contiguous()
                    }
                };
                let (x, residual) = (layout(&c.x), layout(&c.residual));
                let before = residual.copy();
                let got =
                    tch::no_grad(|| c.conv.forward_fused_add(&x, None, affine, &residual)).unwrap();
                let what = format!("{g:?} frozen {frozen_pass} channels_last {channels_last}");
                assert!(gap(&got, &want) < 1e-4, "{what}: gap {}", gap(&got, &want));
                // channels_last: oneDNN's sum post-op wrote into the residual's memory.
                // Contiguous (not fused for a dense kernel): the residual is left as it was.
                let in_place = got.data_ptr() == residual.data_ptr();
                assert_eq!(in_place, channels_last, "{what}");
                if !channels_last {
                    assert!(residual.equal(&before), "{what}: residual untouched");
                }
            }
        }
    }
}

#[test]
fn follows_cpu_autocast_to_bf16() {
    let c = case(geometries()[0], 1, 5);
    let x = to_channels_last(&c.x).unwrap();
    let want = tch::no_grad(|| {
        c.conv
            .forward_static_affine(&c.x, &c.scale, &c.shift)
            .unwrap()
            + &c.residual
    });
    let _guard = frozen::freeze();
    // A bf16 residual (what the previous fused layer gives under autocast) is added into;
    // an fp32 one does not fit the bf16 primitive and is added apart.
    for residual_kind in [Kind::BFloat16, Kind::Float] {
        let residual = to_channels_last(&c.residual.to_kind(residual_kind)).unwrap();
        let got = tch::no_grad(|| {
            autocast(Device::Cpu, Precision::Bf16, || {
                c.conv
                    .forward_fused_add(&x, None, Some((&c.scale, &c.shift)), &residual)
                    .unwrap()
            })
        })
        .unwrap();
        let spread = want.abs().max().double_value(&[]);
        assert!(gap(&got, &want) <= 0.02 * spread, "{residual_kind:?}");
        assert_eq!(
            got.data_ptr() == residual.data_ptr(),
            residual_kind == Kind::BFloat16
        );
    }
}

#[test]
fn gradients_flow_and_the_residual_is_not_overwritten() {
    let c = case(geometries()[0], 1, 6);
    let x = to_channels_last(&c.x).unwrap();
    let residual = to_channels_last(&c.residual)
        .unwrap()
        .set_requires_grad(true);
    let before = residual.detach().copy();
    let y = c
        .conv
        .forward_fused_add(&x, None, Some((&c.scale, &c.shift)), &residual)
        .unwrap();
    assert!(
        residual.detach().equal(&before),
        "no in-place write under autograd"
    );
    let weight = c.conv.bank().weight();
    let grads = Tensor::run_backward(
        &[y.square().sum(Kind::Float)],
        &[weight, &residual],
        false,
        false,
    );
    let want = c
        .conv
        .forward_static_affine(&x, &c.scale, &c.shift)
        .unwrap()
        + &residual;
    let want_grads = Tensor::run_backward(
        &[want.square().sum(Kind::Float)],
        &[weight, &residual],
        false,
        false,
    );
    for (got, want) in grads.iter().zip(&want_grads) {
        assert!(got.abs().max().double_value(&[]) > 0.1);
        assert!(got.allclose(want, 1e-4, 1e-4, false));
    }
}

#[test]
fn basis_projection_adds_its_residual_to_the_per_sample_reference() {
    let g = geometries()[0];
    let c = case(g, 4, 7);
    let alpha = Tensor::rand([3, 4], CPU);
    for channels_last in [false, true] {
        let x = if channels_last {
            to_channels_last(&c.x).unwrap()
        } else {
            c.x.shallow_clone()
        };
        let got = tch::no_grad(|| {
            c.conv
                .forward_fused_add(&x, Some(&alpha), Some((&c.scale, &c.shift)), &c.residual)
                .unwrap()
        });
        let reference = c
            .conv
            .forward_with(&c.x, &alpha, Strategy::PerSample)
            .unwrap();
        let want =
            reference * c.scale.view([1, -1, 1, 1]) + c.shift.view([1, -1, 1, 1]) + &c.residual;
        assert!(
            gap(&got, &want) < 1e-4,
            "channels_last {channels_last}: {}",
            gap(&got, &want)
        );
    }
}
