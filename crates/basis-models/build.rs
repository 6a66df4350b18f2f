fn main() {
    basis_link::libtorch();
    // ONNX's official schema (`proto/onnx.proto`, from the `onnx` 1.23.2 release), compiled
    // to Rust by prost; protox parses it in Rust, so no `protoc` is needed.
    println!("cargo:rerun-if-changed=proto/onnx.proto");
    let files = protox::compile(["proto/onnx.proto"], ["proto"]).expect("proto/onnx.proto parses");
    prost_build::Config::new()
        .compile_fds(files)
        .expect("prost generates the ONNX types");
}
