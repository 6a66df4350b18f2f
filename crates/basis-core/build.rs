//! Link libtorch, and compile the shims: oneDNN's fused convolution (cpp/fused.cpp) and the
//! per-sample 1x1 kernel (cpp/pointwise.cpp), the dense kernel (cpp/dense.cpp), the
//! depthwise kernel (cpp/depthwise.cpp) and its training form (cpp/depthwise_grad.cpp),
//! batch norm in training (cpp/batch_norm.cpp), with what they share (cpp/shim.h, cpp/act.h,
//! cpp/vec.h, cpp/plane.h).

fn main() {
    basis_link::libtorch();
    println!("cargo:rerun-if-changed=cpp/fused.cpp");
    println!("cargo:rerun-if-changed=cpp/pointwise.cpp");
    println!("cargo:rerun-if-changed=cpp/dense.cpp");
    println!("cargo:rerun-if-changed=cpp/depthwise.cpp");
    println!("cargo:rerun-if-changed=cpp/depthwise_grad.cpp");
    println!("cargo:rerun-if-changed=cpp/plane.h");
    println!("cargo:rerun-if-changed=cpp/batch_norm.cpp");
    println!("cargo:rerun-if-changed=cpp/act.h");
    println!("cargo:rerun-if-changed=cpp/shim.h");
    println!("cargo:rerun-if-changed=cpp/vec.h");
    let Some((mut build, lib)) = basis_link::cxx() else {
        panic!("basis-core: torch-sys did not report libtorch's folder (DEP_TCH_LIBTORCH_LIB)")
    };
    // `at::parallel_for` is a header template: without OpenMP it runs on one thread.
    // libtorch's own OpenMP runtime (its `libgomp.so.1`) runs the shims' parallel loops, so
    // the process has one pool of threads.
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-lib=dylib:+verbatim=libgomp.so.1");
    build
        .flag("-fopenmp")
        .flag("-Wno-psabi")
        .file("cpp/fused.cpp")
        .file("cpp/pointwise.cpp")
        .file("cpp/dense.cpp")
        .file("cpp/depthwise.cpp")
        .file("cpp/depthwise_grad.cpp")
        .file("cpp/batch_norm.cpp")
        .compile("basis_core_fused");
}
