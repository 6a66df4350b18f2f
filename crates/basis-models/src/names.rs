//! Variable names: the module path of a layer in its variable store, which is the
//! torchvision `state_dict` prefix of its variables (`features.0.0`).

use tch::nn;

/// The module path of `path` in its variable store (`features.0.0`,
/// `specialist.features.0.0` inside a BasisNet).
pub(crate) fn module_name(path: &nn::Path) -> String {
    path.components().collect::<Vec<_>>().join(".")
}
