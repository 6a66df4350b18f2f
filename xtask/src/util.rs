//! Small helpers shared by the xtask commands.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root (the parent of this crate's folder).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one folder below the workspace root")
        .to_path_buf()
}

/// Run `cmd` with inherited output; a non-zero exit becomes an error naming `what`.
pub fn run(what: &str, cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("could not start {what} ({:?})", cmd.get_program()))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// The date and time now, in UTC (`2026-12-01 06:10 UTC`); empty if `date` fails.
pub fn date() -> String {
    Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// The short hash of the checkout's `HEAD` (`unknown` outside git), with `+changes` when
/// tracked files differ from it.
pub fn commit(root: &Path) -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(root)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        None => "unknown".into(),
        Some(hash) => match git(&["status", "--porcelain", "--untracked-files=no"]) {
            Some(changes) if !changes.is_empty() => format!("{hash}+changes"),
            _ => hash,
        },
    }
}

/// Free bytes on the file system that holds `path` (or its nearest existing ancestor).
pub fn free_bytes(path: &Path) -> Option<u64> {
    let mut probe = path;
    while !probe.exists() {
        probe = probe.parent()?;
    }
    let out = Command::new("df").arg("-Pk").arg(probe).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().nth(1)?;
    let kib: u64 = line.split_whitespace().nth(3)?.parse().ok()?;
    Some(kib * 1024)
}

/// `python3 -m pip install` into the folder `target` (quiet, no cache); add packages.
pub fn pip_install_into(target: &Path) -> Command {
    let mut cmd = Command::new("python3");
    cmd.args([
        "-m",
        "pip",
        "install",
        "--no-input",
        "--disable-pip-version-check",
    ])
    .args(["--no-cache-dir", "--progress-bar", "off", "--target"])
    .arg(target);
    cmd
}

/// Point `link` at `target`, replacing an older link, never a real folder.
pub fn link(link: &Path, target: &Path) -> Result<()> {
    match std::fs::symlink_metadata(link) {
        Ok(meta) if meta.file_type().is_symlink() => {
            if std::fs::read_link(link)? == target {
                return Ok(());
            }
            std::fs::remove_file(link)
                .with_context(|| format!("could not replace the link {}", link.display()))?;
        }
        Ok(_) => bail!(
            "{} exists and is not the link setup makes; move it away and rerun `cargo xtask setup`",
            link.display()
        ),
        Err(_) => {}
    }
    std::os::unix::fs::symlink(target, link)
        .with_context(|| format!("could not link {} to {}", link.display(), target.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_refuses_to_replace_a_real_folder() {
        let tmp = std::env::temp_dir().join(format!("xtask-link-{}", std::process::id()));
        std::fs::create_dir_all(tmp.join("real")).unwrap();
        let err = link(&tmp.join("real"), Path::new("/somewhere")).unwrap_err();
        assert!(err.to_string().contains("is not the link setup makes"));
        link(&tmp.join("made"), Path::new("/first")).unwrap();
        link(&tmp.join("made"), Path::new("/second")).unwrap();
        assert_eq!(
            std::fs::read_link(tmp.join("made")).unwrap(),
            Path::new("/second")
        );
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
