//! `cargo xtask repro`: the paper's claims at the scale of a 2-core machine, on
//! Fashion-MNIST, over several seeds.
//!
//! Trains, with one recipe and every seed (0, 1, 2 by default): the static network of the
//! specialist's architecture, the lightweight model alone, and BasisNets with N = 2, 4, 8
//! bases (N = 1 is the static run); then `basisnet compare` writes the table (mean ±
//! standard deviation over seeds), the paper's claims with their 95% intervals, accuracy
//! against N and the early-exit curves with error bars, and a heatmap of the mean
//! coefficient vector per class for every BasisNet. `--quick` trains one epoch on 2,000
//! images (evaluated on 1,000) with 2 seeds, so CI runs the whole path in minutes.
//!
//! Runs go to `<out>/runs/<configuration>/seed-<s>`. A run with `metrics.json` is
//! finished and kept, a run with a committed checkpoint is resumed, and a run folder with
//! neither (stopped before its first epoch) is started again: an interrupted repro
//! continues where it stopped. `--publish` copies the report and plots into the book.

use crate::{data, setup, util};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The configurations, by name: what each adds to the shared recipe.
const CONFIGS: [(&str, &[&str]); 5] = [
    ("static", &["--baseline"]),
    (
        "lightweight",
        &["--baseline", "--set", "model.baseline_of=lightweight"],
    ),
    ("basisnet-n2", &["--set", "model.num_bases=2"]),
    ("basisnet-n4", &["--set", "model.num_bases=4"]),
    ("basisnet-n8", &["--set", "model.num_bases=8"]),
];

#[derive(Args, Default)]
pub struct ReproArgs {
    /// One epoch on 2,000 training images, 2 seeds (minutes; what CI runs).
    #[arg(long)]
    pub quick: bool,
    /// Seeds per configuration: train.seed = 0, 1, ... (default 3; 2 with --quick).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100))]
    pub seeds: Option<u64>,
    /// Only these configurations, comma-separated (default all): static, lightweight,
    /// basisnet-n2, basisnet-n4, basisnet-n8.
    #[arg(long, value_delimiter = ',')]
    pub configs: Vec<String>,
    /// The recipe every run shares (default: fashion-quick).
    #[arg(long)]
    pub recipe: Option<String>,
    /// Where the runs and the results go (default: target/repro or target/repro-quick).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Override a recipe key in every run (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Copy the report and its plots into the book (docs/src/figures/repro), which the
    /// reproduction page includes.
    #[arg(long)]
    pub publish: bool,
}

/// What every run of an output folder shares; a second repro into the folder must agree.
fn settings(args: &ReproArgs, recipe: &str) -> String {
    let mut text = format!("recipe = {recipe:?}\nquick = {}\n", args.quick);
    for s in &args.set {
        text.push_str(&format!("set = {s:?}\n"));
    }
    text
}

/// The chosen configurations, checked.
fn configs(args: &ReproArgs) -> Result<Vec<(&'static str, &'static [&'static str])>> {
    if args.configs.is_empty() {
        return Ok(CONFIGS.to_vec());
    }
    let names: Vec<&str> = CONFIGS.iter().map(|c| c.0).collect();
    args.configs
        .iter()
        .map(|want| {
            CONFIGS
                .iter()
                .find(|(name, _)| name == want)
                .copied()
                .with_context(|| {
                    format!(
                        "--configs: expected some of {}, found \"{want}\"",
                        names.join(", ")
                    )
                })
        })
        .collect()
}

/// Where a run folder stands.
enum RunState {
    /// `metrics.json` exists: keep it.
    Finished,
    /// A committed checkpoint (`last.json`) and no metrics: resume it.
    Stopped,
    /// Nothing committed (absent, or stopped before its first epoch): train it anew.
    New,
}

fn state(dir: &Path) -> RunState {
    if dir.join("metrics.json").exists() {
        RunState::Finished
    } else if dir.join("last.json").exists() {
        RunState::Stopped
    } else {
        RunState::New
    }
}

pub fn run(args: &ReproArgs) -> Result<()> {
    let chosen = configs(args)?;
    let seeds = args.seeds.unwrap_or(if args.quick { 2 } else { 3 });
    let root = util::workspace_root();
    let recipe = args
        .recipe
        .clone()
        .unwrap_or_else(|| "fashion-quick".into());
    let out = args.out.clone().unwrap_or_else(|| {
        root.join("target")
            .join(if args.quick { "repro-quick" } else { "repro" })
    });
    // Runs of another recipe or overrides in the same folder would be averaged together.
    let stamp = out.join("repro-settings.toml");
    let wanted = settings(args, &recipe);
    match std::fs::read_to_string(&stamp) {
        Ok(found) if found != wanted => bail!(
            "{} holds runs of other settings ({}), not these ({}): pass --out or the same --recipe, --quick and --set",
            out.display(),
            found.trim().replace('\n', ", "),
            wanted.trim().replace('\n', ", ")
        ),
        Ok(_) => {}
        Err(_) if out.join("runs").exists() => bail!(
            "{} holds runs without {}: move it away or pass --out",
            out.join("runs").display(),
            stamp.display()
        ),
        Err(_) => {}
    }
    let torch = setup::run(&setup::SetupArgs::default())?;
    data::run(&data::DataArgs {
        which: data::Which::FashionMnist,
    })?;
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    std::fs::write(&stamp, &wanted)?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let basisnet = |sub: &[&str]| {
        let mut cmd = Command::new(&cargo);
        cmd.current_dir(&root).args(["run", "--quiet"]);
        if !args.quick {
            cmd.arg("--release");
        }
        cmd.args(["-p", "basis-cli", "--"]).args(sub);
        torch.apply_env(&mut cmd);
        cmd
    };
    let mut common: Vec<String> = Vec::new();
    if args.quick {
        for s in [
            "data.limit=2000",
            "data.eval_limit=1000",
            "train.epochs=1",
            "train.batch_size=64",
        ] {
            common.push(s.into());
        }
    }
    common.extend(args.set.iter().cloned());
    let data_root = data::data_root()?;
    let started = std::time::Instant::now();
    let mut dirs = Vec::new();
    for seed in 0..seeds {
        for (name, extra) in &chosen {
            let dir = out.join("runs").join(name).join(format!("seed-{seed}"));
            let mut cmd = match state(&dir) {
                RunState::Finished => {
                    eprintln!("repro: {name}, seed {seed}: finished earlier, kept");
                    dirs.push(dir);
                    continue;
                }
                RunState::Stopped => {
                    eprintln!("repro: {name}, seed {seed}: resuming {}", dir.display());
                    let mut cmd = basisnet(&["train", "--resume"]);
                    cmd.arg(&dir);
                    cmd
                }
                RunState::New => {
                    eprintln!("repro: {name}, seed {seed} -> {}", dir.display());
                    // A folder without a committed checkpoint holds nothing to keep.
                    if dir.exists() {
                        std::fs::remove_dir_all(&dir)
                            .with_context(|| format!("removing {}", dir.display()))?;
                    }
                    let mut cmd = basisnet(&["train", "--recipe", &recipe, "--out"]);
                    cmd.arg(&dir).args(*extra);
                    for s in common.iter().chain([&format!("train.seed={seed}")]) {
                        cmd.args(["--set", s]);
                    }
                    cmd
                }
            };
            cmd.env("BASISNET_DATA_DIR", &data_root);
            util::run(&format!("basisnet train ({name}, seed {seed})"), &mut cmd)?;
            dirs.push(dir);
        }
    }
    let mut compare = basisnet(&["compare", "--out"]);
    compare.arg(&out).args(&dirs);
    util::run("basisnet compare", &mut compare)?;
    let command = format!(
        "cargo xtask repro{}{}{}{}{}",
        if args.quick { " --quick" } else { "" },
        args.seeds
            .map(|s| format!(" --seeds {s}"))
            .unwrap_or_default(),
        if args.configs.is_empty() {
            String::new()
        } else {
            format!(" --configs {}", args.configs.join(","))
        },
        if recipe == "fashion-quick" {
            String::new()
        } else {
            format!(" --recipe {recipe}")
        },
        args.set
            .iter()
            .map(|s| format!(" --set {s}"))
            .collect::<String>()
    );
    let table = std::fs::read_to_string(out.join("results.md"))
        .with_context(|| format!("reading {}", out.join("results.md").display()))?;
    let report = format!(
        "Generated by `{command}` on {}, commit `{}`, recipe `{recipe}`: {} configuration(s) x {seeds} seed(s), {} s in this invocation (finished runs kept from earlier ones), 2 threads a run.\n\n{table}",
        util::date(),
        util::commit(&root),
        chosen.len(),
        started.elapsed().as_secs()
    );
    std::fs::write(out.join("README.md"), &report)?;
    eprintln!("repro: results in {}", out.join("README.md").display());
    if args.publish {
        let book = root.join("docs").join("src").join("figures").join("repro");
        std::fs::create_dir_all(&book)?;
        std::fs::write(book.join("results.md"), &report)?;
        let summary = std::fs::read_to_string(out.join("summary.md"))
            .with_context(|| format!("reading {}", out.join("summary.md").display()))?;
        let readme = root.join("README.md");
        let text = std::fs::read_to_string(&readme)?;
        let block = format!(
            "Generated by `{command}` on {}, commit `{}` (mean ± sample standard deviation over seeds; the claims, every column and the plots: [reproduction](docs/src/reproduction.md)):\n\n{summary}",
            util::date(),
            util::commit(&root)
        );
        std::fs::write(&readme, replace_block(&text, &block)?)?;
        for entry in std::fs::read_dir(&out)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "svg") {
                let name = path.file_name().context("an SVG without a name")?;
                std::fs::copy(&path, book.join(name))?;
            }
        }
        eprintln!("repro: published to {}", book.display());
    }
    Ok(())
}

const BEGIN: &str = "<!-- repro results: generated by cargo xtask repro --publish -->";
const END: &str = "<!-- end of repro results -->";

/// `text` with the lines between the `BEGIN` and `END` markers replaced by `block`.
fn replace_block(text: &str, block: &str) -> Result<String> {
    let (Some(start), Some(end)) = (text.find(BEGIN), text.find(END)) else {
        bail!("README.md has no \"{BEGIN}\" ... \"{END}\" block for the results");
    };
    if end < start {
        bail!("README.md's \"{END}\" comes before its \"{BEGIN}\"");
    }
    Ok(format!(
        "{}{BEGIN}\n{}\n{}",
        &text[..start],
        block.trim_end(),
        &text[end..]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_block_is_replaced_and_the_rest_kept() {
        let text = format!("intro\n{BEGIN}\nold\nlines\n{END}\nafter\n");
        let new = replace_block(&text, "| new |\n").unwrap();
        assert_eq!(new, format!("intro\n{BEGIN}\n| new |\n{END}\nafter\n"));
        assert_eq!(replace_block(&new, "| new |").unwrap(), new);
        assert!(replace_block("no markers", "x").is_err());
        assert!(replace_block(&format!("{END}\n{BEGIN}"), "x").is_err());
    }

    #[test]
    fn configurations_are_checked_and_settings_name_what_runs_share() {
        let args = ReproArgs {
            configs: vec!["static".into(), "basisnet-n4".into()],
            ..Default::default()
        };
        let names: Vec<&str> = configs(&args).unwrap().iter().map(|c| c.0).collect();
        assert_eq!(names, ["static", "basisnet-n4"]);
        let bad = ReproArgs {
            configs: vec!["basisnet-n3".into()],
            ..Default::default()
        };
        let err = configs(&bad).unwrap_err().to_string();
        assert!(err.contains("found \"basisnet-n3\""), "{err}");
        assert_eq!(configs(&ReproArgs::default()).unwrap().len(), 5);
        let with_set = ReproArgs {
            set: vec!["train.epochs=2".into()],
            ..Default::default()
        };
        assert_ne!(
            settings(&with_set, "fashion-quick"),
            settings(&args, "fashion-quick")
        );
        assert_eq!(
            settings(&args, "fashion-quick"),
            settings(&ReproArgs::default(), "fashion-quick")
        );
    }
}
