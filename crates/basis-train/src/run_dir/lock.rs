//! [`RunLock`]: one training process a run folder. An advisory lock file, `.lock`, holds
//! the process id and host of the process training there; a second process is refused
//! with a sentence naming the first, and the lock of a process that is gone (same host,
//! no such process) is taken over.

use super::RunDir;
use crate::error::TrainError;
use std::io::Write;
use std::path::PathBuf;

/// The lock of a run folder, held while a process trains in it; released when dropped.
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
}

/// This machine's name (`/proc/sys/kernel/hostname`, else `HOSTNAME`).
fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".into())
}

/// Whether process `pid` runs on this machine.
fn alive(pid: u32) -> bool {
    PathBuf::from(format!("/proc/{pid}")).exists()
}

impl RunDir {
    /// Take the folder's lock for this process.
    ///
    /// ```
    /// use basis_train::RunDir;
    /// let dir = std::env::temp_dir().join(format!("lock-doc-{}", std::process::id()));
    /// std::fs::create_dir_all(&dir)?;
    /// let run = RunDir::new(&dir);
    /// let lock = run.lock()?;
    /// let err = run.lock().unwrap_err().to_string();
    /// assert!(err.contains("is in use by process"), "{err}");
    /// drop(lock);
    /// let _again = run.lock()?;
    /// # drop(_again);
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn lock(&self) -> Result<RunLock, TrainError> {
        let path = self.path().join(".lock");
        let me = format!("{} {}\n", std::process::id(), host());
        for _ in 0..2 {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut file) => {
                    file.write_all(me.as_bytes())
                        .and_then(|_| file.sync_all())
                        .map_err(TrainError::io(&path))?;
                    return Ok(RunLock { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let text = std::fs::read_to_string(&path).unwrap_or_default();
                    let mut parts = text.split_whitespace();
                    let pid = parts.next().and_then(|p| p.parse::<u32>().ok());
                    let owner = parts.next().unwrap_or("").to_string();
                    match pid {
                        // A process of this machine that is gone: a stale lock.
                        Some(pid) if owner == host() && !alive(pid) => {
                            std::fs::remove_file(&path).map_err(TrainError::io(&path))?;
                        }
                        _ => {
                            return Err(TrainError::Run(format!(
                                "{} is in use by process {} on {} (its lock file {}); wait for it to finish, or remove the lock file if that process is gone",
                                self.path().display(),
                                pid.map_or("?".into(), |p| p.to_string()),
                                if owner.is_empty() { "an unknown host" } else { &owner },
                                path.display()
                            )))
                        }
                    }
                }
                Err(e) => return Err(TrainError::io(&path)(e)),
            }
        }
        Err(TrainError::Run(format!(
            "could not take the lock {} (another process took it at the same moment)",
            path.display()
        )))
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
