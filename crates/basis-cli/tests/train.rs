//! `basisnet train` and `basisnet eval` end to end on a sliver of Fashion-MNIST.

mod common;

use common::basisnet;

use prost::Message;
use std::path::PathBuf;

fn onnx_model(path: &std::path::Path) -> basis_models::onnx::proto::ModelProto {
    basis_models::onnx::proto::ModelProto::decode(std::fs::read(path).unwrap().as_slice()).unwrap()
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
    // The same evaluation under bf16 autocast: close to fp32 (64 images).
    let (ok, out, err) = basisnet(&["eval", "--checkpoint", d, "--json", "--precision", "bf16"]);
    assert!(ok, "{err}");
    let b: serde_json::Value = serde_json::from_str(&out).unwrap();
    let gap =
        (b["specialist_top1"].as_f64().unwrap() - e["specialist_top1"].as_f64().unwrap()).abs();
    assert!(
        gap <= 0.1,
        "bf16 {} against fp32 {}",
        b["specialist_top1"],
        e["specialist_top1"]
    );
    let (ok, _, err) = basisnet(&["eval", "--checkpoint", d, "--precision", "int8"]);
    assert!(
        !ok && err.contains("expected a precision fp32, bf16 or fp16, found \"int8\""),
        "{err}"
    );
    let (ok, csv, _) = basisnet(&["eval", "--checkpoint", d, "--csv"]);
    assert!(ok && csv.starts_with("threshold,exit_rate,top1,avg_madds\n"));

    // predict: top-5 with class names, the deciding stage, MAdds; one clear error for a
    // file that is not an image.
    let data = basis_train::data::default_data_root().join("foolbox/cifar10/val");
    let class_dir = std::fs::read_dir(&data)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let png = std::fs::read_dir(&class_dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let p = png.to_str().unwrap();
    let (ok, out, err) = basisnet(&["predict", "--checkpoint", d, "--json", p, p]);
    assert!(ok, "{err}");
    let preds: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(preds.as_array().unwrap().len(), 2);
    assert_eq!(preds[0]["top5"].as_array().unwrap().len(), 5);
    assert!(preds[0]["top5"][0]["name"].is_string());
    assert!(preds[0]["madds"].as_i64().unwrap() > 0);
    let (ok, _, err) = basisnet(&["predict", "--checkpoint", d, "/nonexistent.png"]);
    assert!(!ok && err.contains("/nonexistent.png"), "{err}");
    // specialize: a static network file, never overwritten.
    let baked = dir.join("baked.safetensors");
    let b = baked.to_str().unwrap();
    let (ok, out, err) = basisnet(&[
        "specialize",
        "--checkpoint",
        d,
        "--coefficients",
        "0.4,0.3,0.2,0.1",
        "--out",
        b,
    ]);
    assert!(ok && out.starts_with("wrote "), "{err}");
    let (tensors, _) = basis_models::checkpoint::read(&baked).unwrap();
    assert_eq!(tensors["features.0.0.weight"].size(), [16, 1, 3, 3]);
    let (ok, _, err) = basisnet(&["specialize", "--checkpoint", d, "--image", p, "--out", b]);
    assert!(!ok && err.contains("exists"), "{err}");
    let (ok, _, err) = basisnet(&[
        "specialize",
        "--checkpoint",
        d,
        "--coefficients",
        "1,0",
        "--out",
        "/tmp/never.safetensors",
    ]);
    assert!(!ok && err.contains("reads 1 vector(s) of 4"), "{err}");
    // The same specialized network as ONNX.
    let baked_onnx = dir.join("baked.onnx");
    let (ok, _, err) = basisnet(&[
        "specialize",
        "--checkpoint",
        d,
        "--coefficients",
        "0.4,0.3,0.2,0.1",
        "--format",
        "onnx",
        "--out",
        baked_onnx.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let inputs: Vec<String> = onnx_model(&baked_onnx)
        .graph
        .unwrap()
        .input
        .into_iter()
        .filter_map(|i| i.name)
        .collect();
    assert_eq!(inputs, ["images"]);

    // export: both stages' graphs with what a deployment needs in their metadata; never
    // over an existing file; one sentence for an opset or format it does not write.
    let onnx = dir.join("onnx");
    let o = onnx.to_str().unwrap();
    let (ok, out, err) = basisnet(&["export", "--checkpoint", d, "--format", "onnx", "--out", o]);
    assert!(
        ok && out.contains("lightweight.onnx") && out.contains("specialist.onnx"),
        "{err}"
    );
    let specialist = onnx_model(&onnx.join("specialist.onnx"));
    let meta: std::collections::BTreeMap<String, String> = specialist
        .metadata_props
        .into_iter()
        .map(|p| (p.key.unwrap(), p.value.unwrap()))
        .collect();
    for key in [
        "mean",
        "std",
        "resolution",
        "lightweight_resolution",
        "exit_threshold",
    ] {
        assert!(meta.contains_key(key), "{key} in {meta:?}");
    }
    assert_eq!(meta["resolution"], "28");
    let names = |m: basis_models::onnx::proto::ModelProto| -> Vec<String> {
        m.graph
            .unwrap()
            .input
            .into_iter()
            .filter_map(|i| i.name)
            .collect()
    };
    assert_eq!(
        names(onnx_model(&onnx.join("specialist.onnx"))),
        ["images", "coefficients"]
    );
    assert_eq!(
        names(onnx_model(&onnx.join("lightweight.onnx"))),
        ["images"]
    );
    let before = std::fs::read(onnx.join("specialist.onnx")).unwrap();
    let (ok, _, err) = basisnet(&["export", "--checkpoint", d, "--format", "onnx", "--out", o]);
    assert!(
        !ok && err.contains("exists; choose another --out (nothing is overwritten)"),
        "{err}"
    );
    assert_eq!(std::fs::read(onnx.join("specialist.onnx")).unwrap(), before);
    let elsewhere = dir.join("onnx-13");
    let (ok, _, err) = basisnet(&[
        "export",
        "--checkpoint",
        d,
        "--format",
        "onnx",
        "--opset",
        "13",
        "--out",
        elsewhere.to_str().unwrap(),
    ]);
    assert!(
        !ok && err.contains("opset 17 to 23") && err.contains("found opset 13"),
        "{err}"
    );
    assert!(!elsewhere.exists());
    let (ok, _, err) = basisnet(&[
        "export",
        "--checkpoint",
        d,
        "--format",
        "safetensors",
        "--out",
        o,
    ]);
    assert!(
        !ok && err.contains("basisnet export writes --format onnx"),
        "{err}"
    );
    // calibrate: a threshold for a target drop.
    let (ok, out, err) = basisnet(&[
        "calibrate",
        "--checkpoint",
        d,
        "--max-drop",
        "0.01",
        "--json",
    ]);
    assert!(ok, "{err}");
    let c: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(c["top1"].as_f64().unwrap() >= c["specialist_top1"].as_f64().unwrap() - 0.01);

    // What the coefficients learned: per-class mean vectors (each a distribution over
    // the 4 bases), entropy between one-hot and uniform, and the heatmap.
    let c = &m["coefficients"];
    assert_eq!(c["num_bases"], 4);
    for row in c["per_class_mean"].as_array().unwrap() {
        let sum: f64 = row
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .sum();
        assert!((sum - 1.0).abs() < 1e-4, "{row}");
    }
    let entropy = c["mean_entropy"].as_f64().unwrap();
    assert!(entropy > 0.0 && entropy <= 4f64.ln() + 1e-6, "{entropy}");
    let heatmap = std::fs::read_to_string(dir.join("coefficients.svg")).unwrap();
    assert!(heatmap.contains("T-shirt/top") && heatmap.contains("basis 3"));

    // compare: this run against the lightweight model trained alone.
    let light = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli-run-light");
    let _ = std::fs::remove_dir_all(&light);
    let l = light.to_str().unwrap();
    let mut args = vec![
        "train",
        "--recipe",
        "fashion-quick",
        "--out",
        l,
        "--baseline",
    ];
    args.extend(["--set", "model.baseline_of=lightweight"]);
    for s in &sets {
        args.extend(["--set", s]);
    }
    let (ok, _, err) = basisnet(&args);
    assert!(ok, "{err}");
    // eval of a finished static baseline reproduces what its training logged: the same
    // transforms (no low-resolution copy) and loader.
    let logged: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(light.join("metrics.json")).unwrap())
            .unwrap();
    let (ok, out, err) = basisnet(&["eval", "--checkpoint", l, "--which", "last", "--json"]);
    assert!(ok, "{err}");
    let e: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(e["specialist_top1"], logged["specialist_top1"], "{out}");
    assert_eq!(e["specialist_top5"], logged["specialist_top5"], "{out}");
    assert_eq!(
        e["ema_specialist_top1"], logged["ema_specialist_top1"],
        "{out}"
    );
    assert_eq!(e["full_madds"], logged["full_madds"], "{out}");
    let (ok, _, err) = basisnet(&["eval", "--checkpoint", l, "--which", "newest"]);
    assert!(!ok && err.contains("newest"), "{err}");
    let report = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli-compare");
    let r = report.to_str().unwrap();
    let (ok, table, err) = basisnet(&["compare", d, l, "--out", r]);
    assert!(ok, "{err}");
    assert!(
        table.contains("| cli-run | BasisNet, N = 4: mobilenet_v3_small 1 at 28 px |"),
        "{table}"
    );
    assert!(
        table.contains("| cli-run-light | lightweight alone: mobilenet_v3_small 0.5 at 20 px |"),
        "{table}"
    );
    for f in [
        "results.md",
        "results.json",
        "accuracy_vs_bases.svg",
        "early_exit.svg",
        "coefficients-cli-run.svg",
    ] {
        assert!(report.join(f).exists(), "{f}");
    }
    // Seeds: runs whose recipes differ only in train.seed are one row, mean ± sd; the
    // claims pair them by seed. Four runs made from this one's files with known top-1s.
    let seeds = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli-compare-seeds");
    let _ = std::fs::remove_dir_all(&seeds);
    let recipe = std::fs::read_to_string(dir.join("recipe.toml")).unwrap();
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("metrics.json")).unwrap()).unwrap();
    let mut made = Vec::new();
    for (name, baseline, seed, top1) in [
        ("basisnet", false, 0, 0.80),
        ("basisnet", false, 1, 0.90),
        ("static", true, 0, 0.79),
        ("static", true, 1, 0.88),
    ] {
        let run = seeds.join(name).join(format!("seed-{seed}"));
        std::fs::create_dir_all(&run).unwrap();
        let r = recipe
            .replace("seed = 0", &format!("seed = {seed}"))
            .replace("baseline = false", &format!("baseline = {baseline}"));
        assert!(
            r.contains(&format!("seed = {seed}")) && r.contains(&format!("baseline = {baseline}"))
        );
        std::fs::write(run.join("recipe.toml"), r).unwrap();
        let mut m = metrics.clone();
        m["specialist_top1"] = top1.into();
        std::fs::write(run.join("metrics.json"), m.to_string()).unwrap();
        made.push(run.to_str().unwrap().to_string());
    }
    let mut args = vec!["compare", "--out", r];
    args.extend(made.iter().map(String::as_str));
    let (ok, table, err) = basisnet(&args);
    assert!(ok, "{err}");
    assert!(
        table.contains("| basisnet | BasisNet, N = 4: mobilenet_v3_small 1 at 28 px | 2 (0, 1) |")
            && table.contains("| 85.00 ± 7.07 |")
            && table.contains("| static | static: mobilenet_v3_small 1 at 28 px | 2 (0, 1) |")
            && table.contains("| 83.50 ± 6.36 |"),
        "{table}"
    );
    // BasisNet minus static, per seed: +1 and +2 points; t(0.975, 1) = 12.706.
    assert!(
        table.contains("- basisnet: +1.50 ± 0.71 points (2 seeds, 95% CI [-4.85, +7.85]; ahead in 2 of 2): **unresolved**"),
        "{table}"
    );
    let (ok, _, err) = basisnet(&["compare", &made[0], &made[0], "--out", r]);
    assert!(
        !ok && err.contains("the same recipe with the same seed 0"),
        "{err}"
    );
    let (ok, _, err) = basisnet(&["compare", "/nonexistent-run", "--out", r]);
    assert!(
        !ok && err.contains("/nonexistent-run: expected a finished run directory"),
        "{err}"
    );

    // Training into a run directory again is refused, and nothing is overwritten.
    let listing = || {
        let mut all: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
            .collect();
        all.sort();
        all
    };
    let before = listing();
    let (ok, _, err) = basisnet(&["train", "--recipe", "fashion-quick", "--out", d]);
    assert!(!ok && err.contains("already holds a run"), "{err}");
    assert!(
        listing() == before,
        "a refused train changed the run folder"
    );
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
        !ok && err.contains("optim.lr must be a finite number > 0, found -1"),
        "{err}"
    );
    let (ok, _, err) = basisnet(&["eval", "--checkpoint", "/nonexistent"]);
    assert!(!ok && err.contains("is not a run directory"), "{err}");
    let (ok, _, err) = basisnet(&["train", "--recipe", "/nonexistent.toml"]);
    assert!(!ok && err.contains("/nonexistent.toml"), "{err}");
    let (ok, _, err) = basisnet(&["train", "--set", "train.lr=-1", "--out", "/nonexistent/x"]);
    assert!(
        !ok && err.contains("key train.lr: unknown field `lr`"),
        "{err}"
    );
    // A device that cannot be had is one sentence, before the run directory exists.
    if !tch::Cuda::is_available() {
        let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli-no-cuda");
        let _ = std::fs::remove_dir_all(&out);
        let o = out.to_str().unwrap();
        let (ok, _, err) = basisnet(&["train", "--device", "cuda", "--out", o]);
        assert!(!ok && err.contains("libtorch sees no CUDA device"), "{err}");
        assert!(!out.exists(), "the run directory was created");
        let (ok, _, err) = basisnet(&["train", "--set", "train.device=\"cuda:1\"", "--out", o]);
        assert!(!ok && err.contains("no CUDA device"), "{err}");
        assert!(!out.exists());
    }
    let (ok, _, err) = basisnet(&["train", "--device", "tpu", "--out", "/nonexistent/x"]);
    assert!(
        !ok && err.contains("expected a device auto, cpu, cuda or cuda:N, found \"tpu\""),
        "{err}"
    );
    let (ok, _, err) = basisnet(&["train", "--recipe", "nope", "--out", "/nonexistent/x"]);
    assert!(
        !ok && err
            .contains("nope is neither a shipped recipe (fashion-quick, imagenet-basisnet-mv3)"),
        "{err}"
    );
    // A recipe path that is not UTF-8 is read like any other.
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let odd = dir.join(std::ffi::OsStr::from_bytes(b"recipe-\xff.toml"));
        std::fs::write(&odd, "[train]\nepochz = 1\n").unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_basisnet"))
            .args(["train", "--out", "/nonexistent/x", "--recipe"])
            .arg(&odd)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("epochz"), "{err}");
    }
}
