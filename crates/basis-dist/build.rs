//! Compile the C++ shim over libtorch's c10d (cpp/) against the libtorch torch-sys links.
//!
//! Headers: libtorch's own (`<libtorch>/include`, from `DEP_TCH_LIBTORCH_LIB`), Gloo's
//! (not in the PyTorch wheel: `cargo xtask setup` unpacks Debian's `libgloo-dev` into the
//! cache and links it as `<workspace>/.c10d`, named by `BASISNET_C10D_HEADERS` in
//! `.cargo/config.toml`; a system `/usr/include/gloo` works too). The NCCL backend is built
//! when libtorch has CUDA (`libtorch_cuda.so`) and the NCCL, CUDA runtime and CCCL headers
//! are found (the wheel's `nvidia/` packages, plus CCCL from the same cache folder).

use std::path::{Path, PathBuf};

const HEADERS_VAR: &str = "BASISNET_C10D_HEADERS";

fn first_with(candidates: &[PathBuf], file: &str) -> Option<PathBuf> {
    candidates.iter().find(|d| d.join(file).exists()).cloned()
}

fn main() {
    basis_link::libtorch();
    for var in [HEADERS_VAR, "DEP_TCH_LIBTORCH_LIB"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    for file in ["cpp/c10d.cpp", "cpp/c10d.h", "cpp/nccl.cpp"] {
        println!("cargo:rerun-if-changed={file}");
    }
    println!("cargo:rustc-check-cfg=cfg(basis_dist_nccl)");

    let Some((mut build, lib)) = basis_link::cxx() else {
        panic!("basis-dist: torch-sys did not report libtorch's folder (DEP_TCH_LIBTORCH_LIB)")
    };
    let torch = lib.parent().unwrap_or(Path::new("/")).to_path_buf();
    let headers = std::env::var_os(HEADERS_VAR).map(PathBuf::from);
    let gloo = first_with(
        &[
            headers
                .as_ref()
                .map(|h| h.join("gloo/include"))
                .unwrap_or_default(),
            PathBuf::from("/usr/include"),
            PathBuf::from("/usr/local/include"),
        ],
        "gloo/algorithm.h",
    );
    let Some(gloo) = gloo else {
        panic!(
            "basis-dist needs Gloo's headers (gloo/algorithm.h), which the PyTorch wheel does not \
             ship: run `cargo xtask setup` (it unpacks Debian's libgloo-dev into the cache), or \
             install libgloo-dev, or set {HEADERS_VAR} to a folder holding gloo/include"
        );
    };
    build
        .define("USE_C10D_GLOO", None)
        .include(&gloo)
        .file("cpp/c10d.cpp");

    if lib.join("libtorch_cuda.so").exists() {
        match nccl_includes(&torch, headers.as_deref()) {
            Ok(dirs) => {
                build.define("USE_C10D_NCCL", None).file("cpp/nccl.cpp");
                for dir in dirs {
                    build.include(dir);
                }
                println!("cargo:rustc-cfg=basis_dist_nccl");
                println!("cargo:rustc-link-search=native={}", lib.display());
                println!("cargo:rustc-link-lib=dylib=torch_cuda");
            }
            Err(missing) => println!(
                "cargo:warning=basis-dist: libtorch has CUDA but the NCCL backend is not built \
                 ({missing} not found; `cargo xtask setup` installs it); Gloo works on CPU and CUDA"
            ),
        }
    }
    build.compile("basis_dist_c10d");
}

/// The include folders NCCL's backend needs, from the wheel's `nvidia/` packages (site is
/// the folder holding `torch/`) and the CCCL headers setup installs.
fn nccl_includes(torch: &Path, headers: Option<&Path>) -> Result<Vec<PathBuf>, &'static str> {
    let site = torch.parent().unwrap_or(Path::new("/"));
    let nvidia = site.join("nvidia");
    let mut cuda_dirs: Vec<PathBuf> = std::fs::read_dir(&nvidia)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.path().join("include"))
                .collect()
        })
        .unwrap_or_default();
    cuda_dirs.sort();
    let nccl = first_with(&cuda_dirs, "nccl.h").ok_or("nccl.h")?;
    let runtime = first_with(&cuda_dirs, "cuda_runtime_api.h").ok_or("cuda_runtime_api.h")?;
    let mut crt_dirs = cuda_dirs.clone();
    crt_dirs.push(site.join("triton/backends/nvidia/include"));
    let crt = first_with(&crt_dirs, "crt/host_config.h").ok_or("crt/host_config.h")?;
    let mut cccl_dirs = cuda_dirs;
    if let Some(h) = headers {
        cccl_dirs.push(h.join("cccl/include"));
    }
    let cccl = first_with(&cccl_dirs, "nv/target").ok_or("CCCL's nv/target")?;
    let mut dirs = vec![nccl, runtime, crt, cccl.clone()];
    if cccl.join("cccl").exists() {
        dirs.push(cccl.join("cccl"));
    }
    Ok(dirs)
}
