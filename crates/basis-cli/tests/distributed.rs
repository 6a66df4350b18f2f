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
    let port = free_port();
    let children: Vec<_> = (0..2)
        .map(|rank| {
            Command::new(env!("CARGO_BIN_EXE_basisnet"))
                .args(args)
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
    for s in [
        "data.limit=64",
        "data.eval_limit=64",
        "data.workers=1",
        "train.epochs=1",
        "train.batch_size=32",
        "train.threads=1",
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
    assert!(m["specialist_top1"].is_number(), "{out0}");
    assert!(
        out1.is_empty() && !err1.contains("epoch"),
        "rank 1 wrote: {out1}{err1}"
    );
    assert!(dir.join("metrics.json").exists() && dir.join("last.safetensors").exists());

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
