//! Time gradient averaging against a plain all-reduce of the same bytes. Run it under a
//! launcher, e.g. two processes on this machine:
//!
//! ```sh
//! torchrun --nproc-per-node 2 --no-python target/release/examples/average
//! ```
//!
//! The parameters have the shapes of a model of `PARAMS` values in `TENSORS` tensors (the
//! Fashion-MNIST BasisNet has 6.5M in about 300).

use basis_dist::{GradientBuckets, GroupOptions, Launch, ProcessGroup, DEFAULT_BUCKET_BYTES};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

const PARAMS: i64 = 6_500_000;
const TENSORS: i64 = 300;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tch::set_num_threads(1);
    let launch = Launch::from_env()?.ok_or("start it under torchrun or with RANK etc. set")?;
    let group = ProcessGroup::init(&launch, &GroupOptions::default())?;
    let each = PARAMS / TENSORS;
    let params: Vec<Tensor> = (0..TENSORS)
        .map(|i| {
            // Sizes from each/2 to 3*each/2, so buckets hold whole tensors of many sizes.
            let n = each / 2 + (i * each) / TENSORS;
            Tensor::zeros([n], (Kind::Float, Device::Cpu)).set_requires_grad(true)
        })
        .collect();
    let total: i64 = params.iter().map(|p| p.numel() as i64).sum();
    Tensor::stack(
        &params
            .iter()
            .map(|p| p.sum(Kind::Float))
            .collect::<Vec<_>>(),
        0,
    )
    .sum(Kind::Float)
    .backward();
    let buckets = GradientBuckets::new(&params, DEFAULT_BUCKET_BYTES);
    let flat = Tensor::ones([total], (Kind::Float, Device::Cpu));
    let (mut bucketed, mut plain) = (Vec::new(), Vec::new());
    for i in 0..12 {
        group.barrier()?;
        let t = Instant::now();
        buckets.all_reduce_mean(&group)?;
        let b = t.elapsed().as_secs_f64();
        group.barrier()?;
        let t = Instant::now();
        group.all_reduce_sum(&[&flat])?;
        let p = t.elapsed().as_secs_f64();
        if i >= 2 {
            bucketed.push(b);
            plain.push(p);
        }
    }
    if group.is_main() {
        println!(
            "{} ranks, {:.1} MB of fp32 gradients in {} tensors, {} buckets: averaging {:.1} ms, \
             one all-reduce of the same bytes {:.1} ms (medians of 10)",
            group.world_size(),
            total as f64 * 4e-6,
            TENSORS,
            buckets.len(),
            1e3 * median(bucketed),
            1e3 * median(plain)
        );
    }
    Ok(())
}
