//! Link libtorch, and compile the C++ shims: oneDNN's fused convolution (cpp/fused.cpp)
//! and squeeze-and-excitation's pool and scale (cpp/squeeze.cpp).

fn main() {
    basis_link::libtorch();
    println!("cargo:rerun-if-changed=cpp/fused.cpp");
    println!("cargo:rerun-if-changed=cpp/squeeze.cpp");
    let Some((mut build, _)) = basis_link::cxx() else {
        panic!("basis-core: torch-sys did not report libtorch's folder (DEP_TCH_LIBTORCH_LIB)")
    };
    // The squeeze's loops are vectorized (`omp simd`, one clone per instruction set), also
    // in debug builds.
    build
        .opt_level(3)
        .flag("-fopenmp-simd")
        .file("cpp/fused.cpp")
        .file("cpp/squeeze.cpp")
        .compile("basis_core_fused");
}
