//! c10d through the shim, with real processes: this test binary starts copies of itself as
//! the ranks of a job (the ignored test `rank` is their body), on loopback with Gloo.

use basis_dist::{DistError, GradientBuckets, GroupOptions, Launch, Launcher, ProcessGroup};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use tch::{Kind, Tensor};

const ROLE: &str = "BASIS_DIST_TEST_ROLE";

fn free_port() -> u16 {
    basis_dist::launch::free_port().unwrap()
}

/// Start `roles.len()` ranks (rank i plays roles[i]) and collect their outputs; a job that
/// has not finished after `deadline` is killed and fails the test (a hang is a bug).
fn job(roles: &[&str], timeout_s: u64, deadline: Duration) -> Vec<Output> {
    let port = free_port();
    let children: Vec<_> = roles
        .iter()
        .enumerate()
        .map(|(rank, role)| {
            Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "rank",
                    "--ignored",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(ROLE, role)
                .envs(Launch::local(rank, roles.len(), port).env())
                .env("BASIS_DIST_TEST_TIMEOUT", timeout_s.to_string())
                .env_remove("TORCHELASTIC_RUN_ID")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let start = Instant::now();
    let mut children = children;
    loop {
        let done = children.iter_mut().all(|c| c.try_wait().unwrap().is_some());
        if done {
            break;
        }
        if start.elapsed() > deadline {
            for c in &mut children {
                let _ = c.kill();
            }
            panic!("the job of {roles:?} did not finish within {deadline:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect()
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn group() -> ProcessGroup {
    let launch = Launch::from_env().unwrap().expect("a rank has RANK etc.");
    assert_eq!(launch.launcher, Launcher::Env);
    let timeout: u64 = std::env::var("BASIS_DIST_TEST_TIMEOUT")
        .unwrap()
        .parse()
        .unwrap();
    let options = GroupOptions {
        timeout: Duration::from_secs(timeout),
        ..GroupOptions::default()
    };
    ProcessGroup::init(&launch, &options).unwrap()
}

/// The body of every rank the tests below start.
#[test]
#[ignore = "a rank of a multi-process job: the other tests start it"]
fn rank() {
    let role = std::env::var(ROLE).expect("started by a test");
    let g = group();
    let r = g.rank() as f64;
    match role.as_str() {
        "collectives" => collectives(&std::sync::Arc::new(g), r),
        "dies" => {
            g.barrier().unwrap();
            // Gone without a word, as a crashed process.
            std::process::exit(3);
        }
        "hangs" => {
            g.barrier().unwrap();
            std::thread::sleep(Duration::from_secs(8));
        }
        "survivor" => {
            g.barrier().unwrap();
            let t = Tensor::ones([4], (Kind::Float, tch::Device::Cpu));
            let err = g.all_reduce_sum(&[&t]).unwrap_err();
            assert!(matches!(err, DistError::Collective { .. }), "{err}");
            // The parent reads this line.
            println!("survivor error: {err}");
        }
        other => panic!("unknown role {other}"),
    }
}

fn collectives(g: &std::sync::Arc<ProcessGroup>, r: f64) {
    assert_eq!(g.world_size(), 2);
    // Sum and max, several tensors and kinds in one call.
    let a = Tensor::from_slice(&[r + 1.0, 10.0 * (r + 1.0)]).to_kind(Kind::Float);
    let b = Tensor::from_slice(&[r as i64 + 5]);
    g.all_reduce_sum(&[&a, &b]).unwrap();
    assert_eq!(Vec::<f32>::try_from(&a).unwrap(), vec![3.0, 30.0]);
    assert_eq!(Vec::<i64>::try_from(&b).unwrap(), vec![11]);
    let m = Tensor::from_slice(&[r as f32, -(r as f32)]);
    g.all_reduce_max(&[&m]).unwrap();
    assert_eq!(Vec::<f32>::try_from(&m).unwrap(), vec![1.0, 0.0]);
    // Broadcast from rank 1.
    let c = Tensor::full([3], 7.0 * r, (Kind::Float, tch::Device::Cpu));
    g.broadcast(&[&c], 1).unwrap();
    assert_eq!(Vec::<f32>::try_from(&c).unwrap(), vec![7.0; 3]);
    g.barrier().unwrap();

    // The differentiable sum: y = x_0 + x_1 on both ranks; rank r's loss is (r + 1) * y,
    // so d(loss_0 + loss_1)/dx_r = 1 + 2 = 3 on every rank.
    let x = Tensor::full([2], r + 1.0, (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
    let y = g.all_reduce_differentiable(&x).unwrap();
    assert_eq!(Vec::<f32>::try_from(&y.detach()).unwrap(), vec![3.0, 3.0]);
    (&y * (r + 1.0)).sum(Kind::Float).backward();
    assert_eq!(Vec::<f32>::try_from(&x.grad()).unwrap(), vec![3.0, 3.0]);

    // Bucketed gradient averaging equals the gradient of the union batch. Both ranks know
    // both ranks' inputs (seeded), each trains on its own half.
    tch::manual_seed(7);
    let w = Tensor::randn([5, 3], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
    let bias = Tensor::randn([3], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
    let inputs = Tensor::randn([8, 5], (Kind::Float, tch::Device::Cpu));
    let loss_of = |x: &Tensor| (x.matmul(&w) + &bias).tanh().square().mean(Kind::Float);
    loss_of(&inputs).backward();
    let (union_w, union_b) = (w.grad().copy(), bias.grad().copy());
    let _ = w.grad().zero_();
    let _ = bias.grad().zero_();
    loss_of(&inputs.narrow(0, 4 * r as i64, 4)).backward();
    // A 16-byte cap puts each parameter in a bucket of its own.
    let buckets = GradientBuckets::new(&[w.shallow_clone(), bias.shallow_clone()], 16);
    assert_eq!(buckets.len(), 2);
    buckets.all_reduce_mean(g).unwrap();
    let diff = (w.grad() - &union_w)
        .abs()
        .max()
        .double_value(&[])
        .max((bias.grad() - &union_b).abs().max().double_value(&[]));
    assert!(
        diff < 1e-6,
        "bucketed mean gradient is {diff} from the union batch's"
    );
    // One bucket for both gives bit-identical results on every rank.
    let one = GradientBuckets::new(&[w.shallow_clone(), bias.shallow_clone()], 1 << 20);
    assert_eq!(one.len(), 1);
    let mine = Tensor::cat(&[w.grad().reshape([-1]), bias.grad().reshape([-1])], 0);
    let theirs = mine.copy();
    g.broadcast(&[&theirs], 0).unwrap();
    assert!(
        mine.equal(&theirs),
        "ranks hold different averaged gradients"
    );

    // Overlapping backward: the hooks fill the buckets as autograd produces gradients;
    // the mean is the same, bit for bit, as averaging after backward. A parameter no rank
    // uses keeps no gradient.
    let averaged = Tensor::cat(&[w.grad().reshape([-1]), bias.grad().reshape([-1])], 0);
    let unused = Tensor::ones([3], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
    let overlap = basis_dist::OverlappingBuckets::new(
        g.clone(),
        &[
            w.shallow_clone(),
            unused.shallow_clone(),
            bias.shallow_clone(),
        ],
        16,
    )
    .unwrap();
    assert_eq!(overlap.len(), 3);
    for _ in 0..2 {
        let _ = w.grad().zero_();
        let _ = bias.grad().zero_();
        overlap.arm();
        loss_of(&inputs.narrow(0, 4 * r as i64, 4)).backward();
        overlap.finish().unwrap();
        let again = Tensor::cat(&[w.grad().reshape([-1]), bias.grad().reshape([-1])], 0);
        assert!(
            again.equal(&averaged),
            "overlapped averaging differs from averaging after backward"
        );
        assert!(
            !unused.grad().defined(),
            "an unused parameter got a gradient"
        );
    }

    // Ranks that disagree on which parameters have gradients get one sentence, not garbage.
    let p = Tensor::ones([2], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
    let q = Tensor::ones([2], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
    let loss = if r == 0.0 {
        p.sum(Kind::Float) + q.sum(Kind::Float)
    } else {
        p.sum(Kind::Float)
    };
    loss.backward();
    let err = GradientBuckets::new(&[p, q], 1 << 20)
        .all_reduce_mean(g)
        .unwrap_err()
        .to_string();
    assert!(err.contains("has a gradient on 1 of 2 ranks"), "{err}");
}

#[test]
fn two_ranks_reduce_broadcast_and_average_gradients() {
    let outs = job(
        &["collectives", "collectives"],
        60,
        Duration::from_secs(120),
    );
    for out in &outs {
        assert!(out.status.success(), "{}", text(out));
    }
}

#[test]
fn a_rank_that_dies_makes_the_others_fail_at_once() {
    // The timeout is 10 minutes: the survivor must learn of the death from the closed
    // connection, not from the clock (the deadline of the job is 2 minutes).
    let outs = job(&["survivor", "dies"], 600, Duration::from_secs(120));
    assert_eq!(outs[1].status.code(), Some(3), "{}", text(&outs[1]));
    assert!(outs[0].status.success(), "{}", text(&outs[0]));
    let stdout = String::from_utf8_lossy(&outs[0].stdout);
    assert!(
        stdout.contains(
            "survivor error: all-reduce (sum) failed on rank 0 of 2: another rank stopped"
        ),
        "{stdout}"
    );
}

#[test]
fn a_rank_that_hangs_makes_the_others_fail_after_the_timeout() {
    let outs = job(&["survivor", "hangs"], 3, Duration::from_secs(120));
    assert!(outs[0].status.success(), "{}", text(&outs[0]));
    let stdout = String::from_utf8_lossy(&outs[0].stdout);
    assert!(
        stdout.contains("survivor error: all-reduce (sum) failed"),
        "{stdout}"
    );
}

/// The error of joining as `launch` with a 2 s timeout.
fn join_error(launch: &Launch) -> String {
    let options = GroupOptions {
        timeout: Duration::from_secs(2),
        ..GroupOptions::default()
    };
    ProcessGroup::init(launch, &options)
        .unwrap_err()
        .to_string()
}

#[test]
fn an_unreachable_store_is_one_sentence_naming_it() {
    let port = free_port();
    let err = join_error(&Launch::local(1, 2, port));
    let expected = format!("could not reach the rendezvous store at 127.0.0.1:{port} within 2 s");
    assert!(err.starts_with(&expected), "{err}");
}

#[test]
fn a_store_port_in_use_is_one_sentence_naming_it() {
    let taken = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let err = join_error(&Launch::local(0, 2, port));
    let expected = format!("could not host the rendezvous store on port {port}");
    assert!(err.starts_with(&expected), "{err}");
}

#[test]
fn a_job_of_one_works_without_peers() {
    let g = ProcessGroup::init(&Launch::single(free_port()), &GroupOptions::default()).unwrap();
    let t = Tensor::from_slice(&[2.0f32]);
    g.all_reduce_sum(&[&t]).unwrap();
    g.barrier().unwrap();
    assert_eq!(Vec::<f32>::try_from(&t).unwrap(), vec![2.0]);
}

#[test]
fn nccl_on_cpu_tensors_is_an_error_not_a_crash() {
    let options = GroupOptions {
        backend: basis_dist::Backend::Nccl,
        timeout: Duration::from_secs(5),
        ..GroupOptions::default()
    };
    let made = ProcessGroup::init(&Launch::single(free_port()), &options);
    let err = match made {
        Err(e) => e.to_string(),
        Ok(g) => {
            let t = Tensor::from_slice(&[2.0f32]);
            g.all_reduce_sum(&[&t]).unwrap_err().to_string()
        }
    };
    if !basis_dist::Backend::nccl_built() {
        assert!(err.contains("this build has no NCCL backend"), "{err}");
    } else if !tch::Cuda::is_available() {
        assert!(
            err.starts_with("could not start the nccl backend on rank 0 of 1: ")
                && err.contains("GPU"),
            "{err}"
        );
        assert!(!err.contains("frame #"), "no C++ backtrace: {err}");
    } else {
        // With a GPU the group starts; a CPU tensor is refused.
        assert!(err.contains("failed on rank 0 of 1"), "{err}");
    }
}
