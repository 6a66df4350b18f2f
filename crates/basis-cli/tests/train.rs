//! `basisnet train` and `basisnet eval` end to end on a sliver of Fashion-MNIST.

use std::path::PathBuf;
use std::process::Command;

fn basisnet(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_basisnet"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn train_then_eval_print_the_metrics_other_tools_read() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli-run");
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.to_str().unwrap();
    let sets = [
        "data.limit=64",
        "data.eval_limit=64",
        "train.epochs=1",
        "train.batch_size=32",
        "train.ema_decay=0.9",
    ];
    let mut args = vec!["train", "--recipe", "fashion-quick", "--out", d, "--json"];
    for s in &sets {
        args.extend(["--set", s]);
    }
    let (ok, out, err) = basisnet(&args);
    assert!(ok, "{err}");
    let m: serde_json::Value = serde_json::from_str(&out).unwrap();
    for key in ["light_top1", "specialist_top1", "ema_specialist_top1"] {
        assert!(m[key].is_number(), "{key} in {out}");
    }
    assert!(err.contains("run directory: "), "{err}");

    let (ok, out, err) = basisnet(&["eval", "--checkpoint", d, "--json"]);
    assert!(ok, "{err}");
    let e: serde_json::Value = serde_json::from_str(&out).unwrap();
    let curve = e["early_exit"].as_array().unwrap();
    assert_eq!(curve.len(), 8);
    for key in ["threshold", "exit_rate", "top1", "avg_madds"] {
        assert!(curve[0][key].is_number(), "{key}");
    }
    // The last threshold (1.01) lets nobody exit: the specialist's own accuracy and cost.
    let last = curve.last().unwrap();
    assert_eq!(last["exit_rate"].as_f64().unwrap(), 0.0);
    assert_eq!(last["top1"], e["specialist_top1"]);
    let (ok, csv, _) = basisnet(&["eval", "--checkpoint", d, "--csv"]);
    assert!(ok && csv.starts_with("threshold,exit_rate,top1,avg_madds\n"));

    // Training into a run directory again is refused, and nothing is overwritten.
    let before = std::fs::read(dir.join("last.safetensors")).unwrap();
    let (ok, _, err) = basisnet(&["train", "--recipe", "fashion-quick", "--out", d]);
    assert!(!ok && err.contains("already holds a run"), "{err}");
    assert_eq!(std::fs::read(dir.join("last.safetensors")).unwrap(), before);
}

#[test]
fn bad_recipes_and_checkpoints_are_one_sentence_and_a_failure() {
    let (ok, _, err) = basisnet(&[
        "train",
        "--set",
        "train.epochz=2",
        "--out",
        "/nonexistent/x",
    ]);
    assert!(!ok);
    assert!(
        err.contains("key train.epochz") && err.contains("epochz"),
        "{err}"
    );
    let (ok, _, err) = basisnet(&["train", "--set", "optim.lr=-1", "--out", "/nonexistent/x"]);
    assert!(
        !ok && err.contains("optim.lr must be > 0, found -1"),
        "{err}"
    );
    let (ok, _, err) = basisnet(&["eval", "--checkpoint", "/nonexistent"]);
    assert!(!ok && err.contains("is not a run directory"), "{err}");
    let (ok, _, err) = basisnet(&["train", "--recipe", "/nonexistent.toml"]);
    assert!(!ok && err.contains("/nonexistent.toml"), "{err}");
}
