//! Recipes, optimizers against references, schedules, resume and non-finite losses.

mod common;

use basis_train::optim::Optimizer;
use basis_train::recipe::{OptimSection, OptimizerKind};
use basis_train::{Checkpoint, Recipe, Run, RunDir, TrainError};
use tch::nn::OptimizerConfig;
use tch::{nn, Device, Kind, Tensor};

#[test]
fn recipe_errors_name_the_key_and_the_line() {
    let dir = common::scratch("recipe-errors");
    let file = dir.join("bad.toml");
    std::fs::write(
        &file,
        "[model]\npreset = \"basisnet-fashion\"\n\n[train]\nepochz = 3\n",
    )
    .unwrap();
    let err = Recipe::load(file.to_str().unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("line 5") && err.contains("epochz"), "{err}");
    std::fs::write(&file, "[train]\nepochs = \"three\"\n").unwrap();
    let err = Recipe::load(file.to_str().unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("line 2") && err.contains("epochs"), "{err}");
    let base = Recipe::load("fashion-quick").unwrap();
    let err = base
        .with_overrides(&["train.epochz=3".into()])
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("--set train.epochz=3: key train.epochz: "),
        "{err}"
    );
    // An unknown key in a known section keeps the sentence that says so.
    let err = base
        .with_overrides(&["train.lr=-1".into()])
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("--set train.lr=-1: key train.lr: unknown field `lr`, expected one of"),
        "{err}"
    );
    let err = Recipe::load("nope").unwrap_err().to_string();
    assert_eq!(
        err,
        "recipe: nope is neither a shipped recipe (fashion-quick, imagenet-basisnet-mv3) nor a recipe file"
    );
    let err = base
        .with_overrides(&["train.epochs".into()])
        .unwrap_err()
        .to_string();
    assert!(err.contains("expected key=value"), "{err}");
    // Overrides of every type land where they belong.
    let r = base
        .with_overrides(&[
            "train.epochs=7".into(),
            "optim.name=\"sgd\"".into(),
            "optim.lr=0.5".into(),
            "data.augment.rand_augment=[2, 9]".into(),
            "model.preset=basisnet-fashion-mv2".into(),
        ])
        .unwrap();
    assert_eq!(r.train.epochs, 7);
    assert_eq!(r.optim.name, OptimizerKind::Sgd);
    assert_eq!(r.data.augment.rand_augment, Some([2, 9]));
    assert_eq!(r.model.preset, "basisnet-fashion-mv2");
    // Impossible values are refused before any work.
    for (set, message) in [
        (
            "optim.lr=-0.1",
            "optim.lr must be a finite number > 0, found -0.1",
        ),
        ("train.batch_size=0", "train.batch_size must be >= 1"),
        ("model.preset=\"resnet\"", "unknown preset \"resnet\""),
        ("train.ema_decay=1.5", "train.ema_decay must be in [0, 1)"),
        (
            "train.static_fraction=1",
            "train.static_fraction must be in [0, 1)",
        ),
        // NaN and infinities fail every range check, not only the ones written for them.
        ("optim.weight_decay=nan", "optim.weight_decay must be >= 0"),
        ("loss.light_weight=nan", "loss.light_weight must be >= 0"),
        (
            "loss.distill_weight=inf",
            "loss.distill_weight must be >= 0",
        ),
        (
            "schedule.warmup_epochs=nan",
            "warmup_epochs and min_lr must be >= 0",
        ),
        (
            "train.exit_thresholds=[0.5, nan]",
            "train.exit_thresholds are finite numbers >= 0",
        ),
        (
            "data.max_bad_fraction=1.5",
            "data.max_bad_fraction is a fraction in [0, 1], found 1.5",
        ),
    ] {
        let err = base
            .with_overrides(&[set.into()])
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains(message), "{set}: {err}");
    }
    // The shipped recipes are valid, and a recipe round-trips through TOML.
    for name in ["fashion-quick", "imagenet-basisnet-mv3"] {
        let r = Recipe::load(name).unwrap();
        r.validate().unwrap();
        assert_eq!(Recipe::from_toml(&r.to_toml(), name).unwrap(), r);
    }
}

/// A small problem: two layers, a fixed batch.
fn problem(vs: &nn::VarStore) -> impl Fn() -> Tensor {
    tch::manual_seed(0);
    let root = vs.root();
    let w1 = (&root / "layer").randn("weight", &[8, 5], 0.0, 0.5);
    let b1 = (&root / "layer").randn("bias", &[8], 0.0, 0.5);
    let w2 = (&root / "head").randn("weight", &[3, 8], 0.0, 0.5);
    let x = Tensor::randn([16, 5], (Kind::Float, Device::Cpu));
    let y = Tensor::randint(3, [16], (Kind::Int64, Device::Cpu));
    move || {
        x.linear(&w1, Some(&b1))
            .tanh()
            .linear::<Tensor>(&w2, None)
            .cross_entropy_for_logits(&y)
    }
}

fn weights(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(k, t)| (k, t.copy()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn sgd_and_adamw_match_libtorch() {
    let _turn = serial();
    for (kind, lr) in [(OptimizerKind::Sgd, 0.1), (OptimizerKind::Adamw, 0.01)] {
        let ours_vs = nn::VarStore::new(Device::Cpu);
        let loss = problem(&ours_vs);
        let config = OptimSection {
            name: kind,
            lr,
            momentum: 0.9,
            nesterov: true,
            weight_decay: 0.01,
            decay_norm_and_bias: true,
            eps: 1e-8,
            ..OptimSection::default()
        };
        let mut ours = Optimizer::new(&ours_vs, config);
        let ref_vs = nn::VarStore::new(Device::Cpu);
        let ref_loss = problem(&ref_vs);
        let mut reference = match kind {
            OptimizerKind::Sgd => nn::Sgd {
                momentum: 0.9,
                dampening: 0.0,
                wd: 0.01,
                nesterov: true,
            }
            .build(&ref_vs, lr)
            .unwrap(),
            _ => nn::AdamW {
                beta1: 0.9,
                beta2: 0.999,
                wd: 0.01,
                eps: 1e-8,
                amsgrad: false,
            }
            .build(&ref_vs, lr)
            .unwrap(),
        };
        for _ in 0..5 {
            ours.zero_grad();
            loss().backward();
            ours.step(lr);
            reference.backward_step(&ref_loss());
        }
        for ((name, a), (_, b)) in weights(&ours_vs).iter().zip(weights(&ref_vs)) {
            let d = (a - &b).abs().max().double_value(&[]);
            assert!(d < 1e-6, "{kind:?} {name}: {d:e}");
        }
    }
}

#[test]
fn rmsprop_is_tensorflows() {
    let _turn = serial();
    // One scalar parameter, loss = p^2 / 2 (gradient p), by hand.
    let vs = nn::VarStore::new(Device::Cpu);
    let p = vs.root().var_copy("p", &Tensor::from(2.0f32));
    let config = OptimSection {
        name: OptimizerKind::Rmsprop,
        momentum: 0.9,
        alpha: 0.9,
        eps: 1e-3,
        weight_decay: 0.0,
        ..OptimSection::default()
    };
    let mut opt = Optimizer::new(&vs, config);
    let (mut value, mut sq, mut buf) = (2.0f64, 1.0f64, 0.0f64);
    for _ in 0..3 {
        opt.zero_grad();
        (&p * &p * 0.5).backward();
        opt.step(0.1);
        let g = value;
        sq = 0.9 * sq + 0.1 * g * g;
        buf = 0.9 * buf + 0.1 * g / (sq + 1e-3).sqrt();
        value -= buf;
        assert!(
            (p.double_value(&[]) - value).abs() < 1e-5,
            "{} vs {value}",
            p.double_value(&[])
        );
    }
    // The state survives a round trip.
    let state: std::collections::BTreeMap<String, Tensor> =
        opt.state_tensors().into_iter().collect();
    let mut again = Optimizer::new(&vs, opt_config_rms());
    again.load_state(&state).unwrap();
    assert_eq!(again.steps(), 3);
}

fn opt_config_rms() -> OptimSection {
    OptimSection {
        name: OptimizerKind::Rmsprop,
        ..OptimSection::default()
    }
}

/// libtorch's RNG is global and the tests of a file run on parallel threads: every test
/// that draws from it (runs, seeded problems, `randn`) takes its turn, so a run is
/// reproducible (a stray draw mid-epoch breaks the bit-identical resume check).
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn tiny(extra: &[&str]) -> Recipe {
    let mut sets: Vec<String> = [
        "data.limit=96",
        "data.eval_limit=64",
        "train.batch_size=32",
        "train.epochs=2",
        "train.ema_decay=0.9",
        "train.log_every=1000",
        "data.workers=2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    sets.extend(extra.iter().map(|s| s.to_string()));
    common::fashion(&sets)
}

fn read_weights(path: &std::path::Path) -> std::collections::BTreeMap<String, Tensor> {
    basis_models::checkpoint::read(path).unwrap().0
}

#[test]
fn a_run_resumed_at_an_epoch_boundary_ends_as_one_that_never_stopped() {
    let _turn = serial();
    let straight = common::scratch("run-straight");
    Run::new(tiny(&[]), &straight).unwrap().train().unwrap();
    let stopped = common::scratch("run-stopped");
    Run::new(tiny(&[]), &stopped)
        .unwrap()
        .train_until(1)
        .unwrap();
    assert!(std::fs::read_to_string(stopped.join("last.json"))
        .unwrap()
        .contains("\"epoch\": 1"));
    let summary = Run::resume(&stopped).unwrap().train().unwrap();
    assert_eq!(summary.state.epoch, 2);
    let files = |dir: &std::path::Path| {
        let f = RunDir::new(dir).checkpoint(Checkpoint::Last).unwrap();
        [f.weights, f.ema, f.optimizer]
    };
    for (a, b) in files(&straight).into_iter().zip(files(&stopped)) {
        let (a, b) = (read_weights(&a), read_weights(&b));
        assert_eq!(a.len(), b.len());
        for (name, t) in &a {
            assert!(t.equal(&b[name]), "{name} differs after resume");
        }
    }
    // Outputs of a run: the recipe, two summary rows, metrics with the early-exit curve.
    let csv = std::fs::read_to_string(stopped.join("summary.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3, "{csv}");
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(stopped.join("metrics.json")).unwrap())
            .unwrap();
    assert!(metrics["light_top1"].is_number() && metrics["ema_specialist_top1"].is_number());
    assert_eq!(metrics["early_exit"].as_array().unwrap().len(), 8);
    // Choices are made on validation: the best epoch is the one of the highest validation
    // top-1 in summary.csv, and metrics.json labels the validation evaluation.
    let v = &metrics["validation"];
    assert!(v["specialist_top1"].is_number() && v["images"] == 64, "{v}");
    let rows: Vec<f64> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(5).unwrap().parse().unwrap())
        .collect();
    let best = rows.iter().cloned().fold(f64::MIN, f64::max);
    assert!(
        (metrics["best_top1"].as_f64().unwrap() - best).abs() < 1e-6,
        "{csv}"
    );
    assert!(stopped.join("recipe.toml").exists());
    // Plots: curves of both epochs, the early-exit sweep.
    let curves = std::fs::read_to_string(stopped.join("curves.svg")).unwrap();
    assert!(
        curves.starts_with("<svg")
            && curves.contains(">specialist<")
            && curves.contains(">lightweight<")
    );
    assert_eq!(
        curves.matches("<polyline").count(),
        3,
        "light, specialist, EMA"
    );
    let exit = std::fs::read_to_string(stopped.join("early_exit.svg")).unwrap();
    assert_eq!(
        exit.matches("<circle").count(),
        8,
        "one marker per threshold"
    );
    // A directory that holds a run is not overwritten.
    let err = Run::new(tiny(&[]), &stopped).err().unwrap().to_string();
    assert!(err.contains("already holds a run"), "{err}");
    // A corrupt optimizer state (a step that is not one integer) is one sentence on resume.
    // (Written as a save would, with its generation, and its size in the commit.)
    let optim = RunDir::new(&stopped)
        .checkpoint(Checkpoint::Last)
        .unwrap()
        .optimizer;
    let (tensors, metadata) = basis_models::checkpoint::read(&optim).unwrap();
    let mut state: Vec<(String, Tensor)> = tensors.into_iter().collect();
    for (name, t) in state.iter_mut() {
        if name == "step" {
            *t = Tensor::from_slice(&[3i64, 4]);
        }
    }
    basis_models::checkpoint::write(&optim, &state, &metadata).unwrap();
    let name = optim.file_name().unwrap().to_str().unwrap();
    let commit = stopped.join("last.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&commit).unwrap()).unwrap();
    json["files"][name] = std::fs::metadata(&optim).unwrap().len().into();
    std::fs::write(&commit, json.to_string()).unwrap();
    let err = Run::resume(&stopped).err().unwrap().to_string();
    assert!(
        err.contains("-optim.safetensors: optimizer state step must be one integer, found a Int64 tensor of shape [2]"),
        "{err}"
    );
}

fn snapshot(vs: &nn::VarStore) -> std::collections::BTreeMap<String, Tensor> {
    vs.variables()
        .into_iter()
        .map(|(name, t)| (name, t.detach().copy()))
        .collect()
}

/// Largest absolute difference between two tensors.
fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn a_static_warm_up_moves_every_basis_together_then_the_coefficients_take_over() {
    let _turn = serial();
    let dir = common::scratch("run-static-warm-up");
    let recipe = tiny(&["train.static_fraction=0.5", "optim.weight_decay=0"]);
    let mut run = Run::new(recipe, &dir).unwrap();
    let start = snapshot(run.var_store());
    run.train_until(1).unwrap();
    let warm = snapshot(run.var_store());
    let banks: Vec<&String> = start
        .keys()
        .filter(|n| n.starts_with("specialist.") && start[*n].dim() >= 3)
        .collect();
    assert!(banks.len() > 50, "{} basis banks", banks.len());
    for name in &banks {
        let (a, b) = (&start[*name], &warm[*name]);
        assert_eq!(a.size()[0], 4, "{name}");
        assert!(max_diff(a, b) > 1e-4, "{name} did not train");
        // Every basis took the same step: their differences are those they started with.
        for k in 1..4 {
            let before = a.get(k) - a.get(0);
            let after = b.get(k) - b.get(0);
            assert!(
                max_diff(&before, &after) < 1e-5,
                "{name}: basis {k} moved apart from basis 0 during the warm-up"
            );
        }
    }
    let head: Vec<&String> = start
        .keys()
        .filter(|n| n.contains("coefficient_head"))
        .collect();
    assert!(!head.is_empty());
    for name in &head {
        assert!(
            start[*name].equal(&warm[*name]),
            "{name} changed in the warm-up"
        );
    }
    // The lightweight classifier trains in the warm-up; the head and the bases after it.
    assert!(start
        .keys()
        .any(|n| n.starts_with("lightweight.") && !start[n].equal(&warm[n])));
    run.train_until(2).unwrap();
    let joint = snapshot(run.var_store());
    for name in &head {
        assert!(
            max_diff(&warm[*name], &joint[*name]) > 1e-6,
            "{name} did not train"
        );
    }
    let apart = banks.iter().any(|name| {
        let (a, b) = (&warm[*name], &joint[*name]);
        max_diff(&(a.get(1) - a.get(0)), &(b.get(1) - b.get(0))) > 1e-4
    });
    assert!(
        apart,
        "per-image coefficients give the bases different steps"
    );
}

#[test]
fn a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint() {
    let _turn = serial();
    let dir = common::scratch("run-nan");
    Run::new(tiny(&["train.ema_decay=0.0"]), &dir)
        .unwrap()
        .train_until(1)
        .unwrap();
    let last = || {
        let weights = RunDir::new(&dir)
            .checkpoint(Checkpoint::Last)
            .unwrap()
            .weights;
        std::fs::read(weights).unwrap()
    };
    let before = last();
    // The same run, continued with an absurd learning rate.
    let recipe = std::fs::read_to_string(dir.join("recipe.toml")).unwrap();
    let recipe = recipe
        .replace("lr = 0.004", "lr = 1e30")
        .replace("name = \"adamw\"", "name = \"sgd\"");
    std::fs::write(dir.join("recipe.toml"), recipe).unwrap();
    let err = Run::resume(&dir).unwrap().train().unwrap_err();
    match &err {
        TrainError::NonFinite { step, epoch, .. } => {
            assert_eq!(*epoch, 2);
            assert!(*step > 3, "{step}");
        }
        other => panic!("expected a non-finite loss, got {other}"),
    }
    assert!(err.to_string().contains("the last good checkpoint is kept"));
    assert_eq!(last(), before);
}

#[test]
fn distillation_is_zero_for_the_teachers_own_logits_and_positive_otherwise() {
    let _turn = serial();
    let t = Tensor::randn([4, 10], (Kind::Float, Device::Cpu));
    let same = basis_train::distillation(&t, &t, 4.0)
        .unwrap()
        .double_value(&[]);
    assert!(same.abs() < 1e-6, "{same}");
    let other = Tensor::randn([4, 10], (Kind::Float, Device::Cpu));
    let kd = basis_train::distillation(&other, &t, 4.0)
        .unwrap()
        .double_value(&[]);
    assert!(kd > 0.0);
    // By hand for one row: T^2 * sum p_t (log p_t - log p_s).
    let (s1, t1) = (other.get(0), t.get(0));
    let pt = (&t1 / 4.0).softmax(-1, Kind::Float);
    let expected = (&pt * (pt.log() - (&s1 / 4.0).log_softmax(-1, Kind::Float)))
        .sum(Kind::Float)
        .double_value(&[])
        * 16.0;
    let one = basis_train::distillation(&other.narrow(0, 0, 1), &t.narrow(0, 0, 1), 4.0)
        .unwrap()
        .double_value(&[]);
    assert!((one - expected).abs() < 1e-4, "{one} vs {expected}");
    assert!(basis_train::distillation(&other.narrow(1, 0, 5), &t, 4.0).is_err());
}

#[test]
fn teachers_are_our_runs_or_torchscript_modules() {
    let _turn = serial();
    // A run of ours teaches.
    let teacher_dir = common::scratch("teacher-run");
    Run::new(tiny(&["train.epochs=1"]), &teacher_dir)
        .unwrap()
        .train()
        .unwrap();
    let student = common::scratch("student-run");
    let mut r = tiny(&["train.epochs=1", "loss.distill_weight=0.5"]);
    r.loss.teacher = Some(teacher_dir.clone());
    Run::new(r, &student).unwrap().train().unwrap();
    assert!(student.join("last.json").exists());
    // A TorchScript module exported from PyTorch teaches (a linear model on 28x28 images).
    let script = common::scratch("teacher-script").join("teacher.pt");
    torchscript_linear_teacher(&script, "");
    let student = common::scratch("student-script");
    let mut r = tiny(&["train.epochs=1"]);
    r.loss.teacher = Some(script);
    Run::new(r, &student).unwrap().train().unwrap();
    // A file that is neither is one clear error.
    let junk = common::scratch("teacher-junk").join("junk.pt");
    std::fs::write(&junk, b"not a module").unwrap();
    let mut r = tiny(&[]);
    r.loss.teacher = Some(junk);
    let err = Run::new(r, &common::scratch("student-junk"))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("not a run directory nor a TorchScript module"),
        "{err}"
    );
}

#[test]
fn mixed_precision_steps_stay_finite_and_close_to_fp32() {
    let _turn = serial();
    // Three steps of the same run in fp32, bf16 and fp16 (autocast on the CPU); weights and
    // optimizer state stay fp32 whatever the precision.
    let mut losses = Vec::new();
    for precision in ["fp32", "bf16", "fp16"] {
        let dir = common::scratch(&format!("precision-{precision}"));
        let set = format!("train.precision=\"{precision}\"");
        let mut run = Run::new(tiny(&["train.epochs=1", &set]), &dir).unwrap();
        let summary = run.train().unwrap();
        assert_eq!(summary.state.step, 3, "{precision}: every step taken");
        for (name, t) in run.var_store().variables() {
            if t.is_floating_point() {
                assert_eq!(t.kind(), Kind::Float, "{precision}: {name}");
            }
        }
        let csv = std::fs::read_to_string(dir.join("summary.csv")).unwrap();
        let row: Vec<&str> = csv.lines().nth(1).unwrap().split(',').collect();
        let loss: f64 = row[2].parse().unwrap();
        assert!(loss.is_finite(), "{precision}: {loss}");
        losses.push(loss);
        // fp16 keeps its loss scale in the checkpoint, for resume.
        let state = std::fs::read_to_string(dir.join("last.json")).unwrap();
        assert_eq!(
            state.contains("loss_scaler"),
            precision == "fp16",
            "{state}"
        );
    }
    for (precision, loss) in ["bf16", "fp16"].iter().zip(&losses[1..]) {
        let gap = (loss - losses[0]).abs() / losses[0];
        assert!(
            gap < 0.05,
            "{precision}: mean loss {loss} against fp32 {}",
            losses[0]
        );
    }
}

/// Save a TorchScript linear model on 28x28 images (`m`) at `path`, after running the
/// Python `setup` on it, with the PyTorch `cargo xtask setup` installed.
fn torchscript_linear_teacher(path: &std::path::Path, setup: &str) {
    let code = format!(
        "import torch\nm = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))\n{setup}torch.jit.script(m).save({:?})\n",
        path.display().to_string()
    );
    common::python(["-c", &code]);
}

/// The share of `split` images `run`'s specialist assigns to each class, and its top-1.
fn predictions(run: &Run, split: basis_train::data::Split) -> ([f64; 10], f64) {
    let loader = basis_train::eval_loader(run.recipe(), split).unwrap();
    let (mut counts, mut right, mut n) = ([0f64; 10], 0f64, 0f64);
    let _guard = tch::no_grad_guard();
    for batch in loader.epoch(0) {
        let batch = batch.unwrap().to_tensors(Device::Cpu).unwrap();
        let out = run.model().forward_t(&batch, false).unwrap();
        let predicted = Vec::<i64>::try_from(out.specialist_logits.argmax(-1, false)).unwrap();
        let labels = Vec::<i64>::try_from(&batch.labels).unwrap();
        for (p, l) in predicted.iter().zip(&labels) {
            counts[*p as usize] += 1.0;
            right += f64::from(u8::from(p == l));
            n += 1.0;
        }
    }
    (counts.map(|c| c / n), right / n)
}

#[test]
fn models_learn_fashion_mnist_well_above_chance() {
    let _turn = serial();
    // 2,048 training images, two epochs (128 steps of 32; the first three quarters a
    // static warm-up), 512 validation and 512 test images: chance is 10%, and a broken
    // gradient, a label shift or a wrong loss stays near it.
    let sets = [
        "data.limit=2048",
        "data.eval_limit=512",
        "train.epochs=2",
        "schedule.warmup_epochs=0.1",
        "train.ema_decay=0.0",
    ];
    for baseline in [false, true] {
        let dir = common::scratch(&format!("learn-{baseline}"));
        let mut recipe = tiny(&sets);
        recipe.model.baseline = baseline;
        let mut run = Run::new(recipe, &dir).unwrap();
        let summary = run.train().unwrap();
        let (m, v) = (
            &summary.metrics.evaluation,
            summary.metrics.validation.unwrap(),
        );
        eprintln!(
            "baseline {baseline}: validation {:.3} (light {:?}), test {:.3} (light {:?})",
            v.specialist_top1, v.light_top1, m.specialist_top1, m.light_top1
        );
        for (what, top1) in [
            ("validation", v.specialist_top1),
            ("test", m.specialist_top1),
        ] {
            assert!(top1 > 0.6, "baseline {baseline}: {what} top-1 {top1}");
        }
        if !baseline {
            let light = m.light_top1.unwrap();
            assert!(light > 0.5, "lightweight top-1 {light}");
        }
        // The metrics are the model's: counted again by hand on the test split.
        let (_, by_hand) = predictions(&run, basis_train::data::Split::Test);
        assert!((by_hand - m.specialist_top1).abs() < 1e-9, "{by_hand}");
        drop(run);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn a_student_follows_a_teacher_that_is_wrong_on_purpose() {
    let _turn = serial();
    // A TorchScript teacher that calls every image "Dress" (class 3), firmly.
    let script = common::scratch("teacher-dress").join("teacher.pt");
    torchscript_linear_teacher(
        &script,
        "with torch.no_grad():\n    m[1].weight.zero_()\n    m[1].bias.zero_()\n    m[1].bias[3] = 10.0\n",
    );
    let sets = [
        "data.limit=512",
        "data.eval_limit=256",
        "train.epochs=1",
        "train.ema_decay=0.0",
    ];
    let mut shares = Vec::new();
    for taught in [false, true] {
        let dir = common::scratch(&format!("student-dress-{taught}"));
        let mut recipe = tiny(&sets);
        if taught {
            recipe.loss.teacher = Some(script.clone());
            recipe.loss.distill_weight = 1.0;
        }
        let mut run = Run::new(recipe, &dir).unwrap();
        run.train().unwrap();
        let (share, _) = predictions(&run, basis_train::data::Split::Val);
        shares.push(share[3]);
        drop(run);
        let _ = std::fs::remove_dir_all(&dir);
    }
    eprintln!(
        "share of 'Dress': alone {:.3}, taught {:.3}",
        shares[0], shares[1]
    );
    // Alone, the student says "Dress" for few images (a tenth of them are dresses);
    // taught, it follows the teacher for most.
    assert!(shares[0] < 0.3, "{shares:?}");
    assert!(shares[1] > 0.5, "{shares:?}");
}
