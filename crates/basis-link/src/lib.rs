//! Build-script helper: make the binaries of a crate find libtorch and keep CUDA linked.
//!
//! `torch-sys` tells the crates that depend on it directly where libtorch's libraries are,
//! through the build-script variable `DEP_TCH_LIBTORCH_LIB`. By default the binaries it
//! produces still need `LD_LIBRARY_PATH` to start, and the linker's `--as-needed` default
//! drops `libtorch_cuda` (nothing references it by symbol), so a GPU is never seen.
//! [`libtorch`] fixes both from a `build.rs`:
//!
//! ```no_run
//! // The body of `fn main` in the build.rs of a crate that depends on `torch-sys`
//! // (directly) and on `basis-link` (as a build-dependency):
//! basis_link::libtorch();
//! ```
//!
//! Link arguments from a build script apply to the package's binaries, tests, examples and
//! benches; doctests get the library folder from `.cargo/config.toml` instead.

use std::path::{Path, PathBuf};

/// The variable `torch-sys` (whose `links` key is `tch`) exports to its direct dependents.
pub const LIBTORCH_LIB_VAR: &str = "DEP_TCH_LIBTORCH_LIB";

/// Link flags for libtorch's library folder `lib_dir`: an rpath to it, and, when the
/// folder holds `libtorch_cuda.so`, that library kept linked despite `--as-needed`.
///
/// ```
/// let flags = basis_link::link_args(std::path::Path::new("/nonexistent/torch/lib"));
/// assert_eq!(flags, vec!["-Wl,-rpath,/nonexistent/torch/lib".to_string()]);
/// ```
pub fn link_args(lib_dir: &Path) -> Vec<String> {
    let mut args = vec![format!("-Wl,-rpath,{}", lib_dir.display())];
    if lib_dir.join("libtorch_cuda.so").exists() {
        args.push("-Wl,--no-as-needed".to_string());
        args.push("-ltorch_cuda".to_string());
        args.push("-Wl,--as-needed".to_string());
    }
    args
}

/// Emit the link arguments of [`link_args`] for libtorch's folder as `torch-sys` reports
/// it. Call from `build.rs`; does nothing on targets other than Linux, or when `torch-sys`
/// is not a direct dependency (the variable is then absent; a warning says so).
pub fn libtorch() {
    println!("cargo:rerun-if-env-changed={LIBTORCH_LIB_VAR}");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") {
        return;
    }
    let Ok(dir) = std::env::var(LIBTORCH_LIB_VAR) else {
        println!(
            "cargo:warning=basis-link: {LIBTORCH_LIB_VAR} is not set; add torch-sys as a direct dependency"
        );
        return;
    };
    // The real folder, so binaries keep working if the `.libtorch` link is moved.
    let dir = std::fs::canonicalize(&dir).unwrap_or_else(|_| PathBuf::from(dir));
    for arg in link_args(&dir) {
        println!("cargo:rustc-link-arg={arg}");
    }
}

/// A C++ build against the libtorch `torch-sys` links (its headers, C++17, its C++ ABI
/// from `LIBTORCH_CXX11_ABI`, default 1 as PyTorch's wheels), for crates that compile a
/// small shim over libtorch APIs `tch` does not reach. Returns the build and libtorch's
/// library folder; `None` when `torch-sys` did not report the folder (not a direct
/// dependency).
pub fn cxx() -> Option<(cc::Build, PathBuf)> {
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    let lib = PathBuf::from(std::env::var(LIBTORCH_LIB_VAR).ok()?);
    let lib = std::fs::canonicalize(&lib).unwrap_or(lib);
    let include = lib.parent().unwrap_or(Path::new("/")).join("include");
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".to_string());
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .pic(true)
        .warnings(false)
        .debug(false)
        .flag("-std=c++17")
        .flag("-w")
        .define("_GLIBCXX_USE_CXX11_ABI", abi.as_str())
        .define("GLOG_USE_GLOG_EXPORT", None)
        .include(&include)
        .include(include.join("torch/csrc/api/include"));
    Some((build, lib))
}
