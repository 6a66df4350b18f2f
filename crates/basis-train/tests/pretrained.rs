//! A run started from pretrained weights (`model.init`, `model.light_init`,
//! `model.specialist_init`): what it copies, what it records, what it refuses.

mod common;

use basis_models::pretrained::Pretrained;
use basis_models::{checkpoint, BasisSpec, MobileNet};
use basis_train::{Recipe, Run};
use std::path::Path;
use tch::{nn, Device, Tensor};

fn tiny(extra: &[String]) -> Recipe {
    let mut sets: Vec<String> = [
        "data.limit=64",
        "data.eval_limit=32",
        "train.batch_size=32",
        "train.epochs=1",
        "train.log_every=1000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    sets.extend(extra.iter().map(|s| s.to_string()));
    common::fashion(&sets)
}

fn set(key: &str, path: &Path) -> String {
    format!("{key}=\"{}\"", path.display())
}

/// Every basis of `variable` (`[N * ...]` or the plain shape) equals `expected`.
fn every_basis_is(variable: &Tensor, expected: &Tensor) -> bool {
    let n = variable.numel() / expected.numel();
    let mut shape = vec![n as i64];
    shape.extend(expected.size());
    variable.reshape(&shape[..]) == expected.unsqueeze(0).expand(&shape[..], false)
}

#[test]
fn a_run_starts_from_timm_weights_records_the_eps_and_refuses_files_that_do_not_fit() {
    let dir = common::scratch("pretrained-start");
    let exported = dir.join("exported");
    common::python([
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../scripts/timm_parity.py")
            .as_os_str(),
        exported.as_os_str(),
    ]);
    let timm = exported.join("mobilenetv3_small_100-gray-7.weights.safetensors");

    // The specialist (MobileNetV3-Small 1.0, one channel, 10 classes) from timm's weights
    // of 7 classes, no noise: every basis is the file's, the classifier starts new.
    let run = Run::new(
        tiny(&[
            set("model.specialist_init", &timm),
            "model.basis_noise=0".into(),
        ]),
        &dir.join("basisnet"),
    )
    .unwrap();
    assert_eq!(
        run.notes(),
        [
            format!("note: model.batch_norm_eps = 0.00001, the eps timm's weights in {} (model.specialist_init) were trained with", timm.display()),
            format!("warning: model.specialist_init ({}): tensors classifier.3.weight and classifier.3.bias for 7 classes, the model has 10; this layer starts new", timm.display()),
        ]
    );
    assert_eq!(run.recipe().model.batch_norm_eps, Some(1e-5));
    let saved = std::fs::read_to_string(dir.join("basisnet/recipe.toml")).unwrap();
    assert!(saved.contains("batch_norm_eps = 0.00001"), "{saved}");
    let variables = run.var_store().variables();
    let weights = Pretrained::read(&timm).unwrap();
    let mut compared = 0;
    for (name, tensor) in weights.tensors() {
        if name.starts_with("classifier.3.") {
            continue;
        }
        let mine = &variables[&format!("specialist.{name}")];
        assert!(every_basis_is(mine, tensor), "specialist.{name}");
        compared += 1;
    }
    assert_eq!(compared, weights.tensors().len() - 2);
    // The lightweight model was not asked to start from it.
    assert!(run.recipe().model.light_init.is_none() && run.recipe().model.init.is_none());

    // Trained and resumed without the file: the run directory has all it needs.
    let mut run = run;
    run.train().unwrap();
    drop(run);
    let moved = dir.join("moved.safetensors");
    std::fs::rename(&timm, &moved).unwrap();
    let resumed = Run::resume(&dir.join("basisnet")).unwrap();
    assert_eq!(resumed.recipe().model.batch_norm_eps, Some(1e-5));
    assert!(resumed.notes().is_empty());
    drop(resumed);
    std::fs::rename(&moved, &timm).unwrap();

    // The lightweight model's backbone (MobileNetV3-Small 0.5) does not fit the file: one
    // sentence naming the tensor and both shapes, and no run directory.
    let refused = dir.join("refused");
    let err = Run::new(tiny(&[set("model.init", &timm)]), &refused)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("has shape [")
            && err.contains("the model expects [")
            && err.ends_with("(timm mobilenet_v3_small)"),
        "{err}"
    );
    assert!(!refused.exists());

    // torchvision's names for the lightweight model, timm's for the specialist: their
    // batch norms would need different eps.
    let config = tiny(&[]).basisnet().unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let _light = MobileNet::new(&vs.root(), config.lightweight, BasisSpec::fixed()).unwrap();
    let light_file = dir.join("light.safetensors");
    checkpoint::save(&vs, &light_file, &Default::default()).unwrap();
    let err = Run::new(
        tiny(&[
            set("model.light_init", &light_file),
            set("model.specialist_init", &timm),
        ]),
        &refused,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("need batch-norm eps 0.00001 and") && err.contains("need 0.001"),
        "{err}"
    );
    assert!(!refused.exists());

    // A path that is not a file.
    let err = tiny(&[set("model.init", &dir.join("nowhere.safetensors"))])
        .validate()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("model.init must be a safetensors file of pretrained weights"),
        "{err}"
    );
}
