//! `basisnet profile` prints the machine-readable figures other tools read.

mod common;

use common::basisnet;

#[test]
fn backbone_json_has_totals_and_layers() {
    let (ok, out, err) = basisnet(&[
        "profile",
        "--arch",
        "mobilenet_v3_large",
        "--width",
        "1.0",
        "--in-chans",
        "3",
        "--classes",
        "1000",
        "--resolution",
        "224",
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["total"]["params"], 5483032);
    assert_eq!(v["total"]["madds"], 216589760);
    let layers = v["layers"].as_array().unwrap();
    assert_eq!(layers[0]["name"], "features.0");
    assert_eq!(layers[0]["output"], serde_json::json!([16, 112, 112]));
    let sum: i64 = layers.iter().map(|l| l["madds"].as_i64().unwrap()).sum();
    assert_eq!(sum, 216589760);
}

#[test]
fn preset_json_splits_the_cost() {
    let (ok, out, err) = basisnet(&["profile", "--preset", "basisnet-mv3", "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["lightweight"]["madds"], 73427840);
    assert_eq!(v["specialist"]["madds"], 216589760);
    let synthesis = v["synthesis"]["madds"].as_i64().unwrap();
    let head = v["coefficient_head"]["madds"].as_i64().unwrap();
    assert_eq!(
        v["total"]["madds"].as_i64().unwrap(),
        73427840 + head + 216589760 + synthesis
    );
}

#[test]
fn bad_values_are_one_sentence_and_a_failure() {
    let (ok, out, err) = basisnet(&["profile", "--arch", "resnet50"]);
    assert!(!ok && out.is_empty());
    assert!(
        err.contains("invalid value 'resnet50' for '--arch <ARCH>'")
            && err.contains(
                "[possible values: mobilenet_v2, mobilenet_v3_large, mobilenet_v3_small]"
            ),
        "{err}"
    );
    let (ok, _, err) = basisnet(&["profile", "--resolution", "12"]);
    assert!(!ok);
    assert!(err.contains("need at least 17 px"), "{err}");
    let (ok, _, err) = basisnet(&["profile", "--preset", "nope"]);
    assert!(!ok);
    assert!(
        err.contains("invalid value 'nope' for '--preset <PRESET>'")
            && err.contains("basisnet-fashion-mv2"),
        "{err}"
    );
    // Sizes that no machine holds are refused with a sentence before anything is allocated.
    let (ok, _, err) = basisnet(&["profile", "--width", "100000"]);
    assert!(
        !ok && err.contains("width multiplier must be in (0, 10], found 100000"),
        "{err}"
    );
    let (ok, _, err) = basisnet(&["profile", "--classes", "1000000000"]);
    assert!(
        !ok && err.contains("classes must be in 1..=1000000, found 1000000000"),
        "{err}"
    );
    let (ok, _, err) = basisnet(&["profile", "--resolution", "1000000"]);
    assert!(!ok && err.contains("at most 16384 px"), "{err}");
    let (ok, _, err) = basisnet(&["benchmark", "--batch", "1000000000"]);
    assert!(
        !ok && err.contains("--batch 1000000000 needs ")
            && err.contains("GiB for its input images alone"),
        "{err}"
    );
}
