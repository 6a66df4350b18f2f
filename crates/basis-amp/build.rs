//! Compile the autocast shim (cpp/amp.cpp) against the libtorch torch-sys links.

fn main() {
    basis_link::libtorch();
    println!("cargo:rerun-if-changed=cpp/amp.cpp");
    let Some((mut build, _)) = basis_link::cxx() else {
        panic!("basis-amp: torch-sys did not report libtorch's folder (DEP_TCH_LIBTORCH_LIB)")
    };
    build.file("cpp/amp.cpp").compile("basis_amp");
}
