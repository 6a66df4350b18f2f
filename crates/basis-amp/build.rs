//! Compile the shim (cpp/amp.cpp: autocast; cpp/deterministic.cpp) against the libtorch torch-sys links.

fn main() {
    basis_link::libtorch();
    println!("cargo:rerun-if-changed=cpp/amp.cpp");
    println!("cargo:rerun-if-changed=cpp/deterministic.cpp");
    let Some((mut build, _)) = basis_link::cxx() else {
        panic!("basis-amp: torch-sys did not report libtorch's folder (DEP_TCH_LIBTORCH_LIB)")
    };
    build
        .file("cpp/amp.cpp")
        .file("cpp/deterministic.cpp")
        .compile("basis_amp");
}
