//! Forward throughput on CPU at 224 px, batch 1 and 32, fp32, 2 threads: the static
//! MobileNetV3-Large, the specialist stage of `basisnet-mv3` (per-sample coefficients),
//! the whole `basisnet-mv3` without exit, and with early exit at a fixed 42% exit rate
//! (the rate that turns the paper's 290M into its 198M average).
//!
//! `cargo bench -p basis-models` prints criterion's estimates, then a table of medians.

use basis_models::{presets, BasisNet, BasisSpec, Layout, MobileNet};
use criterion::{BenchmarkId, Criterion};
use std::time::Duration;
use tch::{nn, Device, Kind, Tensor};

#[path = "../../basis-core/benches/support/mod.rs"]
mod support;

const GROUP: &str = "basis-models";
const BATCHES: [i64; 2] = [1, 32];
const EXIT_RATE: f64 = 0.42;
/// Layouts measured, with their row suffix (`Auto` is what users get).
const LAYOUTS: [(Layout, &str); 3] = [
    (Layout::Auto, ""),
    (Layout::ChannelsLast, " channels_last"),
    (Layout::Contiguous, " nchw"),
];

struct Models {
    fixed: MobileNet,
    net: BasisNet,
    _vs: (nn::VarStore, nn::VarStore),
}

fn models() -> Models {
    let mut config = presets::get("basisnet-mv3").unwrap();
    // Momentum 1: one training pass sets the statistics to a batch's, so the untrained
    // lightweight model's confidences differ between images and the exit rate can be set.
    config.lightweight.batch_norm.momentum = 1.0;
    let vs = nn::VarStore::new(Device::Cpu);
    let net = BasisNet::new(&vs.root(), config).unwrap();
    tch::no_grad(|| {
        for (name, mut var) in vs.variables() {
            if name.starts_with("lightweight.classifier") {
                let _ = var.normal_(0.0, 0.05);
            }
        }
    });
    let calibration = Tensor::rand([8, 3, 128, 128], (Kind::Float, Device::Cpu));
    let light = net.lightweight();
    let _ = tch::no_grad(|| light.forward_t(&calibration, true)).unwrap();
    let fixed_vs = nn::VarStore::new(Device::Cpu);
    let fixed = MobileNet::new(&fixed_vs.root(), config.specialist, BasisSpec::fixed()).unwrap();
    Models {
        fixed,
        net,
        _vs: (vs, fixed_vs),
    }
}

/// The threshold at which a fraction `rate` of `light_images` exits.
fn threshold_for(net: &BasisNet, light_images: &Tensor, rate: f64) -> f64 {
    let out = tch::no_grad(|| net.lightweight().forward_t(light_images, false)).unwrap();
    let conf = out
        .logits
        .softmax(-1, Kind::Float)
        .amax([-1].as_slice(), false);
    let mut c: Vec<f32> = Vec::try_from(&conf).unwrap();
    c.sort_by(|a, b| b.partial_cmp(a).unwrap());
    let exits = ((c.len() as f64) * rate).round() as usize;
    f64::from(c[exits.saturating_sub(1)])
}

fn rows() -> Vec<(&'static str, String)> {
    let mut rows = Vec::new();
    for batch in BATCHES {
        for name in [
            "static mobilenet_v3_large",
            "static mobilenet_v3_large nchw",
            "specialist stage",
            "specialist stage channels_last",
            "specialist stage nchw",
            "basisnet-mv3 no exit",
        ] {
            rows.push((name, format!("b{batch}")));
        }
        if batch > 1 {
            rows.push(("basisnet-mv3 exit 42pct", format!("b{batch}")));
        }
    }
    rows
}

fn bench(c: &mut Criterion) {
    tch::set_num_threads(2);
    let _guard = tch::no_grad_guard();
    let mut m = models();
    let mut group = c.benchmark_group(GROUP);
    for batch in BATCHES {
        let images = Tensor::rand([batch, 3, 224, 224], (Kind::Float, Device::Cpu));
        let light_images = m.net.lightweight_input(&images).unwrap();
        let coefficients = m
            .net
            .lightweight()
            .forward_t(&light_images, false)
            .unwrap()
            .coefficients;
        let id = |name: &str| BenchmarkId::new(name, format!("b{batch}"));
        for (layout, suffix) in LAYOUTS {
            m.fixed.set_layout(layout);
            m.net.specialist_mut().set_layout(layout);
            if layout != Layout::ChannelsLast {
                group.bench_function(id(&format!("static mobilenet_v3_large{suffix}")), |b| {
                    b.iter(|| m.fixed.forward_t(&images, &[], false).unwrap())
                });
            }
            group.bench_function(id(&format!("specialist stage{suffix}")), |b| {
                b.iter(|| {
                    m.net
                        .specialist()
                        .forward_t(&images, &coefficients, false)
                        .unwrap()
                })
            });
        }
        m.fixed.set_layout(Layout::Auto);
        m.net.specialist_mut().set_layout(Layout::Auto);
        group.bench_function(id("basisnet-mv3 no exit"), |b| {
            b.iter(|| m.net.early_exit(&light_images, &images, 2.0).unwrap())
        });
        if batch > 1 {
            let t = threshold_for(&m.net, &light_images, EXIT_RATE);
            let out = m.net.early_exit(&light_images, &images, t).unwrap();
            let exited = out
                .stages
                .iter()
                .filter(|s| **s == basis_models::Stage::Lightweight)
                .count();
            eprintln!("early exit: threshold {t:.6}, {exited}/{batch} samples exit");
            group.bench_function(id("basisnet-mv3 exit 42pct"), |b| {
                b.iter(|| m.net.early_exit(&light_images, &images, t).unwrap())
            });
        }
    }
    group.finish();
}

fn print_table() {
    println!("\nMedians (224 px, fp32, 2 threads; ratio to the static MobileNetV3-Large in its default layout, same batch):\n");
    println!("| model | batch | ms per batch | images/s | ratio |");
    println!("|---|---|---|---|---|");
    for (name, batch) in rows() {
        let ms = support::median_ms(GROUP, name, &batch);
        let base = support::median_ms(GROUP, "static mobilenet_v3_large", &batch);
        let n: f64 = batch[1..].parse().unwrap();
        match (ms, base) {
            (Some(ms), Some(base)) => println!(
                "| {name} | {n} | {ms:.2} | {:.1} | {:.2}x |",
                n * 1000.0 / ms,
                ms / base
            ),
            _ => println!("| {name} | {n} | - | - | - |"),
        }
    }
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    bench(&mut c);
    c.final_summary();
    if std::env::args().any(|a| a == "--bench") {
        print_table();
    }
}
