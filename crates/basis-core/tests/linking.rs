//! The test binary starts without `LD_LIBRARY_PATH` (an rpath) and keeps `libtorch_cuda`
//! linked, so a GPU is seen where there is one (`basis-link` in build.rs).

#[test]
fn libtorch_cuda_is_loaded_when_libtorch_has_it() {
    // Touch libtorch so the check is about a binary that uses it.
    let cuda = tch::Cuda::is_available();
    let maps = std::fs::read_to_string("/proc/self/maps").expect("Linux /proc");
    let torch_cpu = maps
        .lines()
        .find(|l| l.ends_with("/libtorch_cpu.so"))
        .expect("libtorch_cpu.so is mapped");
    let lib_dir = std::path::Path::new(torch_cpu.split_whitespace().last().unwrap())
        .parent()
        .unwrap()
        .to_path_buf();
    if lib_dir.join("libtorch_cuda.so").exists() {
        assert!(
            maps.contains("/libtorch_cuda.so"),
            "libtorch_cuda.so exists in {} but was dropped by the linker",
            lib_dir.display()
        );
    } else {
        assert!(!cuda, "CUDA without libtorch_cuda.so");
    }
}

#[test]
fn runs_without_ld_library_path_pointing_at_libtorch() {
    let ld = std::env::var("LD_LIBRARY_PATH").unwrap_or_default();
    assert!(
        !ld.split(':')
            .any(|p| std::path::Path::new(p).join("libtorch_cpu.so").exists()),
        "LD_LIBRARY_PATH names libtorch ({ld}); this test must show the rpath alone suffices"
    );
    // libtorch was found through the rpath: it runs.
    let sum = tch::Tensor::from_slice(&[1.0f32, 2.0, 3.5]).sum(tch::Kind::Float);
    assert_eq!(sum.double_value(&[]), 6.5);
}
