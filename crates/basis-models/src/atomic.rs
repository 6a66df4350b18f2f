//! Atomic file writing, the one way every run file and checkpoint is written: a temporary
//! file beside the target, fsync, rename, then fsync of the folder, so a crash leaves
//! either the old file or the new one, never half of one.
//!
//! Fault injection, for the tests of what a crash or a full disk leaves behind: with
//! `BASISNET_FAULT=abort-at:N` the process aborts (as `kill -9` would: nothing cleaned up)
//! at the `N`-th step of atomic writing counted from its start, and with
//! `BASISNET_FAULT=enospc-at:N` that step fails with "No space left on device". Each write
//! has three steps: its data written, synced, renamed into place.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// What `BASISNET_FAULT` asks for: abort (true) or fail with ENOSPC (false) at a step.
fn fault() -> Option<(bool, u64)> {
    static FAULT: OnceLock<Option<(bool, u64)>> = OnceLock::new();
    *FAULT.get_or_init(|| {
        let value = std::env::var("BASISNET_FAULT").ok()?;
        let (kind, at) = value.split_once(':')?;
        let at = at.parse().ok()?;
        match kind {
            "abort-at" => Some((true, at)),
            "enospc-at" => Some((false, at)),
            _ => None,
        }
    })
}

/// One step of atomic writing: where an injected fault strikes.
fn step() -> std::io::Result<()> {
    static STEPS: AtomicU64 = AtomicU64::new(0);
    let Some((abort, at)) = fault() else {
        return Ok(());
    };
    if STEPS.fetch_add(1, Ordering::SeqCst) + 1 == at {
        if abort {
            std::process::abort();
        }
        // ENOSPC, as a full disk reports it.
        return Err(std::io::Error::from_raw_os_error(28));
    }
    Ok(())
}

fn temporary(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Write `path` atomically with what `fill` writes into a buffered file.
///
/// ```
/// let dir = std::env::temp_dir().join(format!("atomic-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// let path = dir.join("a.txt");
/// basis_models::atomic::write_with(&path, |w| {
///     use std::io::Write;
///     w.write_all(b"hello")
/// })?;
/// assert_eq!(std::fs::read(&path)?, b"hello");
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn write_with(
    path: &Path,
    fill: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let tmp = temporary(path);
    let result = (|| {
        let mut writer = BufWriter::new(File::create(&tmp)?);
        fill(&mut writer)?;
        let file = writer.into_inner().map_err(|e| e.into_error())?;
        step()?;
        file.sync_all()?;
        step()?;
        std::fs::rename(&tmp, path)?;
        step()?;
        // The rename itself is durable once the folder is; a file system that cannot sync
        // a folder still has the new file in place, so that is not a failure.
        let folder = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let _ = File::open(folder).and_then(|f| f.sync_all());
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Write `bytes` to `path` atomically.
///
/// ```
/// let path = std::env::temp_dir().join(format!("atomic-bytes-{}", std::process::id()));
/// basis_models::atomic::write(&path, b"one")?;
/// basis_models::atomic::write(&path, b"two")?;
/// assert_eq!(std::fs::read(&path)?, b"two");
/// # std::fs::remove_file(&path)?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_with(path, |w| w.write_all(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_keeps_the_old_file_and_leaves_no_temporary() {
        let dir = std::env::temp_dir().join(format!("atomic-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keep.json");
        write(&path, b"old").unwrap();
        let err = write_with(&path, |w| {
            w.write_all(b"half")?;
            Err(std::io::Error::other("disk full"))
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "disk full");
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert!(!temporary(&path).exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
