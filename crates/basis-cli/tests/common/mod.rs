//! Running the `basisnet` binary from the tests.

use std::process::Command;

/// Run `basisnet args...`: (success, stdout, stderr).
pub fn basisnet(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_basisnet"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}
