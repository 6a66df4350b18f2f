//! The PyTorch peer of the benchmarks (`scripts/basisnet_torch.py`) computes the layers it
//! is compared on: every formulation of every kind of basis layer equals the per-sample
//! reference within 1e-4, outputs and gradients, in both memory layouts
//! (`scripts/peer_parity.py`, with the PyTorch `cargo xtask setup` installed).

mod common;

#[test]
fn every_formulation_of_the_pytorch_peer_equals_the_per_sample_reference() {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/peer_parity.py");
    common::python([script]);
}
