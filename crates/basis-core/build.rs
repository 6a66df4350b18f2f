//! Link libtorch, and compile the shim over oneDNN's fused convolution (cpp/fused.cpp).

fn main() {
    basis_link::libtorch();
    println!("cargo:rerun-if-changed=cpp/fused.cpp");
    let Some((mut build, _)) = basis_link::cxx() else {
        panic!("basis-core: torch-sys did not report libtorch's folder (DEP_TCH_LIBTORCH_LIB)")
    };
    build.file("cpp/fused.cpp").compile("basis_core_fused");
}
