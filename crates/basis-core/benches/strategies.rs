//! Each execution strategy on MobileNetV3-Large layer shapes (224 px input), N = 8 bases,
//! batch 1 and 32, fp32, forward, with a static layer of the same shape as the baseline;
//! convolutions in both activation layouts (NCHW, and NHWC = `channels_last`).
//!
//! `cargo bench -p basis-core` prints criterion's estimates, then one table of medians
//! (milliseconds) with each strategy's ratio to the static layer.

use basis_core::{to_channels_last, BasisConv2d, BasisLinear, Conv2dGeometry, Strategy};
use criterion::{BenchmarkId, Criterion};
use std::time::Duration;
use tch::{Device, Kind, Tensor};

mod support;

const BASES: i64 = 8;
const BATCHES: [i64; 2] = [1, 32];
const GROUP: &str = "basis-core";

/// (name, geometry, input size); `None` geometry means the 960 -> 1280 linear head.
fn shapes() -> Vec<(&'static str, Option<Conv2dGeometry>, i64)> {
    vec![
        (
            "expand 1x1 80-480 14px",
            Some(Conv2dGeometry::new(80, 480, 1)),
            14,
        ),
        (
            "depthwise 5x5 960 7px",
            Some(Conv2dGeometry::new(960, 960, 5).padding(2).groups(960)),
            7,
        ),
        (
            "project 1x1 480-112 14px",
            Some(Conv2dGeometry::new(480, 112, 1)),
            14,
        ),
        ("head linear 960-1280", None, 1),
    ]
}

enum Layer {
    Conv(Box<BasisConv2d>, Box<BasisConv2d>),
    Linear(BasisLinear, BasisLinear),
}

impl Layer {
    fn new(geometry: Option<Conv2dGeometry>) -> Self {
        let f = (Kind::Float, Device::Cpu);
        match geometry {
            Some(g) => {
                let mut shape = vec![BASES];
                shape.extend(g.weight_shape());
                let bank = Tensor::randn(&shape, f) * 0.05;
                let stat = bank.narrow(0, 0, 1);
                Layer::Conv(
                    Box::new(BasisConv2d::from_bank(&bank, None, g).unwrap()),
                    Box::new(BasisConv2d::from_bank(&stat, None, g).unwrap()),
                )
            }
            None => {
                let bank = Tensor::randn([BASES, 1280, 960], f) * 0.05;
                let bias = Tensor::zeros([BASES, 1280], f);
                Layer::Linear(
                    BasisLinear::from_bank(&bank, Some(&bias)).unwrap(),
                    BasisLinear::from_bank(&bank.narrow(0, 0, 1), Some(&bias.narrow(0, 0, 1)))
                        .unwrap(),
                )
            }
        }
    }

    fn input(&self, batch: i64, hw: i64, nhwc: bool) -> Tensor {
        let f = (Kind::Float, Device::Cpu);
        match self {
            Layer::Conv(l, _) => {
                let x = Tensor::randn([batch, l.geometry().in_channels, hw, hw], f);
                if nhwc {
                    to_channels_last(&x).unwrap()
                } else {
                    x
                }
            }
            Layer::Linear(l, _) => Tensor::randn([batch, l.in_features()], f),
        }
    }

    /// The activation layouts worth measuring: both for convolutions, one for linear.
    fn layouts(&self) -> &'static [bool] {
        match self {
            Layer::Conv(..) => &[false, true],
            Layer::Linear(..) => &[false],
        }
    }

    fn supports(&self, s: Strategy) -> bool {
        match self {
            Layer::Conv(l, _) => s.supports(l.geometry()),
            Layer::Linear(..) => true,
        }
    }

    fn run(&self, x: &Tensor, alpha: &Tensor, s: Strategy) -> Tensor {
        match self {
            Layer::Conv(l, _) => l.forward_with(x, alpha, s).unwrap(),
            Layer::Linear(l, _) => l.forward_with(x, alpha, s).unwrap(),
        }
    }

    fn run_static(&self, x: &Tensor) -> Tensor {
        match self {
            Layer::Conv(_, l) => l.forward_static(x).unwrap(),
            Layer::Linear(_, l) => l.forward_static(x).unwrap(),
        }
    }
}

/// The columns of the table: the static baseline, then each strategy.
fn columns() -> Vec<String> {
    let mut cols = vec!["static".to_string()];
    cols.extend(Strategy::CONCRETE.iter().map(|s| s.name().to_string()));
    cols.push(Strategy::Auto.name().to_string());
    cols
}

fn bench(c: &mut Criterion) {
    tch::set_num_threads(2);
    let _guard = tch::no_grad_guard();
    let mut group = c.benchmark_group(GROUP);
    for (name, geometry, hw) in shapes() {
        let layer = Layer::new(geometry);
        for (batch, &nhwc) in BATCHES
            .into_iter()
            .flat_map(|b| layer.layouts().iter().map(move |l| (b, l)))
        {
            let x = layer.input(batch, hw, nhwc);
            let per_sample =
                Tensor::rand([batch, BASES], (Kind::Float, Device::Cpu)).softmax(-1, Kind::Float);
            let one_row = per_sample.narrow(0, 0, 1);
            let row = row_id(name, batch, nhwc);
            let id = |col: &str| BenchmarkId::new(row.clone(), col);
            group.bench_function(id("static"), |b| b.iter(|| layer.run_static(&x)));
            for s in Strategy::CONCRETE.into_iter().chain([Strategy::Auto]) {
                if !layer.supports(s) {
                    continue;
                }
                // `Shared` is the fixed-specialist case: one coefficient row for the batch.
                let alpha = if s == Strategy::Shared {
                    &one_row
                } else {
                    &per_sample
                };
                group.bench_function(id(s.name()), |b| b.iter(|| layer.run(&x, alpha, s)));
            }
        }
    }
    group.finish();
}

/// The benchmark id of one table row.
fn row_id(name: &str, batch: i64, nhwc: bool) -> String {
    let layout = if nhwc { " nhwc" } else { "" };
    format!("{name} b{batch}{layout}")
}

fn print_table() {
    let cols = columns();
    println!("\nMedians in ms (ratio to static), N = {BASES}, fp32, 2 threads:\n");
    println!("| layer | batch | layout | {} |", cols.join(" | "));
    println!("|---|---|---|{}", "---|".repeat(cols.len()));
    let median_ms = |row: &str, col: &str| support::median_ms(GROUP, row, col);
    for (name, geometry, _) in shapes() {
        let layouts: &[bool] = if geometry.is_some() {
            &[false, true]
        } else {
            &[false]
        };
        for (batch, &nhwc) in BATCHES
            .into_iter()
            .flat_map(|b| layouts.iter().map(move |l| (b, l)))
        {
            let row = row_id(name, batch, nhwc);
            let base = median_ms(&row, "static");
            let cells: Vec<String> = cols
                .iter()
                .map(|col| match (median_ms(&row, col), base) {
                    (Some(ms), Some(b)) if col != "static" => format!("{ms:.3} ({:.2}x)", ms / b),
                    (Some(ms), _) => format!("{ms:.3}"),
                    (None, _) => "-".into(),
                })
                .collect();
            let layout = if nhwc { "NHWC" } else { "NCHW" };
            println!("| {name} | {batch} | {layout} | {} |", cells.join(" | "));
        }
    }
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(15)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(1500))
        .configure_from_args();
    bench(&mut c);
    c.final_summary();
    if std::env::args().any(|a| a == "--bench") {
        print_table();
    }
}
