fn main() {
    basis_link::libtorch();
}
