//! `basisnet train --distributed`: two processes on loopback, as `torchrun --no-python` or
//! a hand-set environment would start them.

use std::path::PathBuf;
use std::process::{Command, Stdio};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Start `basisnet args...` as ranks 0 and 1 of a 2-process job; (success, stdout, stderr)
/// of each.
fn two_ranks(args: &[&str]) -> Vec<(bool, String, String)> {
    two_ranks_each(&[args, args])
}

/// Ranks 0 and 1 with their own arguments.
fn two_ranks_each(args: &[&[&str]; 2]) -> Vec<(bool, String, String)> {
    let port = free_port();
    let children: Vec<_> = (0..2)
        .map(|rank| {
            Command::new(env!("CARGO_BIN_EXE_basisnet"))
                .args(args[rank])
                .env("RANK", rank.to_string())
                .env("WORLD_SIZE", "2")
                .env("LOCAL_RANK", rank.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", port.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    children
        .into_iter()
        .map(|c| {
            let o = c.wait_with_output().unwrap();
            (
                o.status.success(),
                String::from_utf8_lossy(&o.stdout).into(),
                String::from_utf8_lossy(&o.stderr).into(),
            )
        })
        .collect()
}

#[test]
fn two_processes_train_one_run_that_rank_zero_writes() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli-distributed");
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.to_str().unwrap();
    let mut args = vec!["train", "--distributed", "--out", d, "--json"];
    // Enough to learn: two epochs on 2,048 images (batches of 16 per rank, the first three
    // quarters a static warm-up), as the one-process learning test trains.
    for s in [
        "data.limit=2048",
        "data.eval_limit=512",
        "data.workers=1",
        "train.epochs=2",
        "train.batch_size=32",
        "train.threads=1",
        "train.ema_decay=0.0",
        "train.log_every=1000",
        "schedule.warmup_epochs=0.1",
        "distributed.batch_norm=sync",
    ] {
        args.extend(["--set", s]);
    }
    let ranks = two_ranks(&args);
    let (ok0, out0, err0) = &ranks[0];
    let (ok1, out1, err1) = &ranks[1];
    assert!(*ok0 && *ok1, "rank 0: {err0}\nrank 1: {err1}");
    assert!(err0.contains("(2 processes, gloo backend)"), "{err0}");
    let m: serde_json::Value = serde_json::from_str(out0).unwrap();
    // The two ranks learned together: well above chance (10%) on images neither saw.
    let top1 = |v: &serde_json::Value, key: &str| v[key].as_f64().unwrap_or(f64::NAN);
    for (what, v) in [("test", &m), ("validation", &m["validation"])] {
        let (specialist, light) = (top1(v, "specialist_top1"), top1(v, "light_top1"));
        eprintln!("two ranks, {what}: specialist {specialist}, lightweight {light}");
        assert!(
            specialist > 0.6,
            "{what} specialist top-1 {specialist}: {out0}"
        );
        assert!(light > 0.5, "{what} lightweight top-1 {light}: {out0}");
    }
    assert!(
        out1.is_empty() && !err1.contains("epoch"),
        "rank 1 wrote: {out1}{err1}"
    );
    assert!(dir.join("metrics.json").exists() && dir.join("last.json").exists());

    // A batch the ranks cannot split is one sentence on each, and nothing is written.
    let bad = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli-distributed-bad");
    let _ = std::fs::remove_dir_all(&bad);
    let ranks = two_ranks(&[
        "train",
        "--distributed",
        "--out",
        bad.to_str().unwrap(),
        "--set",
        "train.batch_size=33",
        "--set",
        "data.limit=66",
    ]);
    for (ok, _, err) in &ranks {
        assert!(
            !*ok && err.contains("train.batch_size 33 does not split over 2 processes"),
            "{err}"
        );
    }
    assert!(!bad.exists(), "nothing written");
}

#[test]
fn distributed_without_a_launcher_is_one_sentence() {
    let out = Command::new(env!("CARGO_BIN_EXE_basisnet"))
        .args(["train", "--distributed", "--out", "/nonexistent/x"])
        .env_remove("RANK")
        .env_remove("WORLD_SIZE")
        .env_remove("SLURM_PROCID")
        .env_remove("TORCHELASTIC_RUN_ID")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("--distributed found no launcher"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_basisnet"))
        .args(["train", "--distributed"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--distributed needs --out"), "{err}");
}

const QUICK: [&str; 12] = [
    "--set",
    "data.limit=64",
    "--set",
    "data.eval_limit=64",
    "--set",
    "data.workers=1",
    "--set",
    "train.batch_size=32",
    "--set",
    "train.threads=1",
    "--set",
    "distributed.timeout_s=20",
];

#[test]
fn a_rank_that_stops_makes_the_other_fail_with_one_sentence() {
    // Rank 1 trains one epoch and exits; rank 0 goes on to a second epoch, whose first
    // gradient all-reduce finds the connection closed.
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli-distributed-stop");
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.to_str().unwrap();
    let mut a0 = vec![
        "train",
        "--distributed",
        "--out",
        d,
        "--set",
        "train.epochs=2",
    ];
    let mut a1 = vec![
        "train",
        "--distributed",
        "--out",
        d,
        "--set",
        "train.epochs=1",
    ];
    a0.extend(QUICK);
    a1.extend(QUICK);
    let ranks = two_ranks_each(&[&a0, &a1]);
    let (ok0, _, err0) = &ranks[0];
    assert!(ranks[1].0, "{}", ranks[1].2);
    assert!(!*ok0, "rank 0 should fail");
    assert!(
        err0.contains("failed on rank 0 of 2: another rank stopped or hung"),
        "{err0}"
    );
    // The first epoch's checkpoint is kept.
    assert!(dir.join("last.json").exists());

    // Rank 1 refuses its recipe before joining: rank 0 waits for it as long as
    // distributed.timeout_s says (3 s here), then names the store.
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli-distributed-absent");
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.to_str().unwrap();
    let a0 = [
        "train",
        "--distributed",
        "--out",
        d,
        "--set",
        "distributed.timeout_s=3",
    ];
    let a1 = ["train", "--distributed", "--out", d, "--set", "optim.lr=-1"];
    let ranks = two_ranks_each(&[&a0, &a1]);
    assert!(
        !ranks[1].0 && ranks[1].2.contains("optim.lr must be a finite number > 0"),
        "{}",
        ranks[1].2
    );
    assert!(!ranks[0].0);
    assert!(
        ranks[0]
            .2
            .contains("could not host the rendezvous store on port"),
        "{}",
        ranks[0].2
    );
}

/// The Python packages `cargo xtask setup` installed: the folder holding libtorch's `torch`.
fn python_site() -> PathBuf {
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let libtorch = std::env::var_os("LIBTORCH")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join(".libtorch"));
    std::fs::canonicalize(libtorch)
        .ok()
        .and_then(|p| p.parent().map(std::path::Path::to_path_buf))
        .expect("libtorch's folder: run `cargo xtask setup`")
}

#[test]
fn under_torchrun_the_ranks_use_its_agents_store() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli-torchrun");
    let _ = std::fs::remove_dir_all(&dir);
    let port = free_port().to_string();
    let mut args = vec![
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        &port,
        "--no-python",
        env!("CARGO_BIN_EXE_basisnet"),
        "train",
        "--distributed",
        "--out",
        dir.to_str().unwrap(),
        "--set",
        "train.epochs=1",
    ];
    args.extend(QUICK);
    let out = Command::new("python3")
        .args(&args)
        .env("PYTHONPATH", python_site())
        .env_remove("RANK")
        .env_remove("WORLD_SIZE")
        .output()
        .expect("python3 (cargo xtask setup installs PyTorch for it)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("(2 processes, gloo backend)"), "{err}");
    assert!(dir.join("metrics.json").exists());
}
