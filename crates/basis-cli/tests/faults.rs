//! What a crash or a full disk during training leaves behind (`BASISNET_FAULT`, the fault
//! hook of `basis_models::atomic`): the process is aborted, as `kill -9` would, at many
//! steps of its file writing, or a step fails with "No space left on device"; the run is
//! then resumed, and must end with exactly the weights, EMA weights and optimizer state of
//! a run that was never interrupted, or refuse with a sentence.

mod common;

use basis_train::{Checkpoint, RunDir};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use tch::Tensor;

const SETS: [&str; 6] = [
    "data.limit=64",
    "data.eval_limit=32",
    "train.epochs=2",
    "train.batch_size=32",
    "train.checkpoint_every=1",
    "train.ema_decay=0.9",
];

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// `basisnet train` into `dir` (or `--resume dir`), with `fault` as `BASISNET_FAULT`.
fn train(dir: &Path, resume: bool, fault: Option<String>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_basisnet"));
    cmd.arg("train");
    if resume {
        cmd.arg("--resume").arg(dir);
    } else {
        cmd.args(["--recipe", "fashion-quick", "--out"]).arg(dir);
        for s in SETS {
            cmd.args(["--set", s]);
        }
    }
    match fault {
        Some(f) => cmd.env("BASISNET_FAULT", f),
        None => cmd.env_remove("BASISNET_FAULT"),
    };
    cmd.output().unwrap()
}

/// Every tensor of the final `last` checkpoint: weights, EMA weights, optimizer state.
fn last(dir: &Path) -> BTreeMap<String, Tensor> {
    let files = RunDir::new(dir).checkpoint(Checkpoint::Last).unwrap();
    let mut all = BTreeMap::new();
    for (tag, path) in [
        ("w", files.weights),
        ("e", files.ema),
        ("o", files.optimizer),
    ] {
        for (name, t) in basis_models::checkpoint::read(&path).unwrap().0 {
            all.insert(format!("{tag}.{name}"), t);
        }
    }
    all
}

fn assert_same(a: &BTreeMap<String, Tensor>, b: &BTreeMap<String, Tensor>, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    for (name, t) in a {
        assert!(t.equal(&b[name]), "{what}: {name} differs");
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_run_killed_or_out_of_disk_while_saving_resumes_to_the_same_weights() {
    let straight = scratch("faults-straight");
    let out = train(&straight, false, None);
    assert!(out.status.success(), "{}", stderr(&out));
    let reference = last(&straight);

    // Abort at every 7th step of the run's file writing (three steps a file; a run of two
    // epochs writes about 35 files), until a run gets through all of them.
    let mut aborted = 0;
    for at in (1..1000).step_by(7) {
        let dir = scratch("faults-killed");
        let out = train(&dir, false, Some(format!("abort-at:{at}")));
        if out.status.success() {
            break;
        }
        assert!(
            out.status.code().is_none(),
            "step {at}: not killed: {}",
            stderr(&out)
        );
        aborted += 1;
        let resumed = train(&dir, true, None);
        if resumed.status.success() {
            assert_same(&reference, &last(&dir), &format!("killed at step {at}"));
        } else {
            // Killed before any checkpoint was committed: one sentence, nothing trained.
            let err = stderr(&resumed);
            assert!(
                err.contains("nothing to resume from") || err.contains("no recipe.toml"),
                "killed at step {at}: {err}"
            );
        }
    }
    assert!(aborted >= 10, "only {aborted} fault points were reached");

    // A disk that fills during the second epoch's saves (steps 52, 60, 70: inside `best`,
    // `epoch-2` and `last`): one sentence naming the file, then the run resumes.
    for at in [52, 60, 70] {
        let dir = scratch("faults-full");
        let out = train(&dir, false, Some(format!("enospc-at:{at}")));
        assert!(!out.status.success(), "step {at}: the run did not fail");
        let err = stderr(&out);
        assert!(
            err.contains("No space left on device") && err.contains(&*dir.to_string_lossy()),
            "step {at}: {err}"
        );
        assert!(
            std::fs::read_dir(&dir).unwrap().all(|e| !e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".tmp")),
            "a temporary file was left behind"
        );
        let resumed = train(&dir, true, None);
        assert!(resumed.status.success(), "step {at}: {}", stderr(&resumed));
        assert_same(&reference, &last(&dir), &format!("disk full at step {at}"));
    }
    // Each run folder holds ~400 MB of checkpoints.
    for name in ["faults-straight", "faults-killed", "faults-full"] {
        let _ = std::fs::remove_dir_all(scratch(name));
    }
}

#[test]
fn a_mixture_of_two_saves_is_refused_and_resume_falls_back_to_a_complete_epoch() {
    let dir = scratch("faults-mixture");
    let out = train(&dir, false, None);
    assert!(out.status.success(), "{}", stderr(&out));
    let run = RunDir::new(&dir);
    let last = run.checkpoint(Checkpoint::Last).unwrap();
    // The weights of another save in place of `last`'s (the same size).
    let best = run.checkpoint(Checkpoint::Best).unwrap();
    assert_eq!(
        std::fs::metadata(&best.weights).unwrap().len(),
        std::fs::metadata(&last.weights).unwrap().len()
    );
    std::fs::copy(&best.weights, &last.weights).unwrap();
    let d = dir.to_str().unwrap();
    let (ok, _, err) = common::basisnet(&["eval", "--checkpoint", d, "--which", "last"]);
    assert!(
        !ok && err.contains("the checkpoint is a mixture of two saves"),
        "{err}"
    );
    // A missing file: `last` is incomplete; resume takes epoch-2 and says so.
    std::fs::remove_file(&last.optimizer).unwrap();
    let out = train(&dir, true, None);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("is incomplete") && err.contains("resuming from the epoch-2 checkpoint"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn train_takes_only_a_new_or_empty_folder_and_one_process_at_a_time() {
    // A folder of the user's files is refused, and nothing in it changes.
    let dir = scratch("faults-user-folder");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("summary.csv"), "mine\n").unwrap();
    let out = train(&dir, false, None);
    let err = stderr(&out);
    assert!(
        !out.status.success() && err.contains("is not empty (it holds summary.csv)"),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    assert_eq!(
        std::fs::read_to_string(dir.join("summary.csv")).unwrap(),
        "mine\n"
    );

    // A bad setting leaves no folder behind.
    let fresh = scratch("faults-refused");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_basisnet"));
    cmd.args(["train", "--recipe", "fashion-quick", "--out"])
        .arg(&fresh)
        .args(["--set", "data.dir=\"/nonexistent/data\""]);
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    assert!(!fresh.exists(), "{}", stderr(&out));

    // A folder another live process trains in is refused, naming it; a stale lock (a
    // process that is gone) is taken over.
    let dir = scratch("faults-locked");
    let out = train(&dir, false, None);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut sleeper = Command::new("sleep").arg("30").spawn().unwrap();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    std::fs::write(
        dir.join(".lock"),
        format!("{} {}", sleeper.id(), host.trim()),
    )
    .unwrap();
    let out = train(&dir, true, None);
    let err = stderr(&out);
    assert!(
        !out.status.success() && err.contains(&format!("is in use by process {}", sleeper.id())),
        "{err}"
    );
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
    let out = train(&dir, true, None);
    assert!(out.status.success(), "stale lock: {}", stderr(&out));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_command_line_values_are_one_sentence_that_says_each_cause_once() {
    let dir = scratch("faults-inputs");
    let out = train(&dir, false, None);
    assert!(out.status.success(), "{}", stderr(&out));
    let d = dir.to_str().unwrap();
    // A missing image: its path once, the OS error once.
    let (ok, _, err) = common::basisnet(&["predict", "--checkpoint", d, "/nonexistent/a.png"]);
    assert!(!ok);
    assert_eq!(err.matches("/nonexistent/a.png").count(), 1, "{err}");
    assert_eq!(err.matches("(os error 2)").count(), 1, "{err}");
    // Coefficients that are not numbers write nothing.
    let target = dir.join("mix.safetensors");
    let t = target.to_str().unwrap();
    for bad in ["nan,0,0,0", "inf,0,0,0"] {
        let (ok, _, err) = common::basisnet(&[
            "specialize",
            "--checkpoint",
            d,
            "--coefficients",
            bad,
            "--out",
            t,
        ]);
        assert!(
            !ok && err.contains("--coefficients takes finite numbers; number 1 is"),
            "{err}"
        );
        assert!(!target.exists());
    }
    // Numbers: finite and in range, checked by the argument parser.
    for args in [
        &["predict", "--checkpoint", d, "--threshold", "nan", "x.png"][..],
        &["calibrate", "--checkpoint", d, "--max-drop", "-1"],
        &["eval", "--checkpoint", d, "--thresholds", "0.5,inf"],
    ] {
        let (ok, _, err) = common::basisnet(args);
        assert!(
            !ok && err.contains("expected a finite number >= 0"),
            "{args:?}: {err}"
        );
    }
    // An empty recipe file: one sentence naming the inconsistent key, no folder.
    let recipe = dir.join("empty.toml");
    std::fs::write(&recipe, "").unwrap();
    let run = scratch("faults-empty-recipe");
    let (ok, _, err) = common::basisnet(&[
        "train",
        "--recipe",
        recipe.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("augment.mean has 3 values"), "{err}");
    assert!(!run.exists());
    let _ = std::fs::remove_dir_all(&dir);
}
