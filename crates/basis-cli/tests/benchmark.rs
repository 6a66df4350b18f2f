//! `basisnet benchmark`: what `cargo xtask bench` reads, and its refusals.

mod common;

use common::basisnet;
use std::path::PathBuf;

/// `basisnet benchmark --json` on the CPU, one timed batch, no warm-up, plus `extra`.
fn quick(extra: &[&str]) -> (bool, String, String) {
    let mut args = vec![
        "benchmark",
        "--iters",
        "1",
        "--warmup",
        "0",
        "--device",
        "cpu",
        "--json",
    ];
    args.extend(extra);
    basisnet(&args)
}

#[test]
fn benchmark_prints_throughput_cost_and_memory_and_saves_the_state_once() {
    let (ok, out, err) = quick(&["--model", "mobilenet-v3-large", "--batch", "2"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["images_per_s"].as_f64().unwrap() > 0.0);
    assert!(v["peak_rss_mib"].as_f64().unwrap() > 10.0);
    // torchvision's MobileNetV3-Large: 5,483,032 parameters, 216.6M MAdds at 224 px.
    assert_eq!(v["params"], 5_483_032);
    assert_eq!(v["madds"].as_f64().unwrap(), 216_589_760.0);

    // Early exit: half of a batch of 4 exits, so the average cost is the lightweight
    // stage plus half the rest; the state file holds weights, batch, logits, threshold.
    let state = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bench-state.safetensors");
    let _ = std::fs::remove_file(&state);
    let s = state.to_str().unwrap();
    let (ok, out, err) = quick(&[
        "--model",
        "basisnet-mv3-exit",
        "--batch",
        "4",
        "--exit-rate",
        "0.5",
        "--save-state",
        s,
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let full = 73_427_840.0 + 7_680.0 + 216_589_760.0 + 43_669_056.0;
    let light = 73_427_840.0 + 7_680.0;
    assert_eq!(v["madds"].as_f64().unwrap(), light + 0.5 * (full - light));
    assert!(v["threshold"].as_f64().unwrap().is_finite());
    // The two least confident images go through the specialist.
    assert_eq!(v["specialist_images"], 2);
    let (tensors, metadata) = basis_models::checkpoint::read(&state).unwrap();
    assert_eq!(tensors["batch.images"].size(), [4, 3, 224, 224]);
    assert_eq!(tensors["batch.logits"].size(), [4, 1000]);
    assert!(tensors.contains_key("specialist.features.0.0.weight"));
    assert!(metadata.contains_key("threshold"));
    // Never overwritten.
    let before = std::fs::read(&state).unwrap();
    let (ok, _, err) = basisnet(&[
        "benchmark",
        "--model",
        "basisnet-mv3",
        "--batch",
        "1",
        "--save-state",
        s,
    ]);
    assert!(
        !ok && err.contains("already exists; not overwriting it"),
        "{err}"
    );
    assert_eq!(std::fs::read(&state).unwrap(), before);
    // Bad values: one sentence.
    let (ok, _, err) = basisnet(&["benchmark", "--batch", "0"]);
    assert!(
        !ok && err.contains("--batch and --iters must be >= 1, found 0 and 10"),
        "{err}"
    );
    let (ok, _, err) = basisnet(&["benchmark", "--exit-rate", "1.5"]);
    assert!(
        !ok && err.contains("--exit-rate must be in [0, 1], found 1.5"),
        "{err}"
    );
}
