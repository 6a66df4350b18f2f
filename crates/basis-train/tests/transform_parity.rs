//! The evaluation transform (resize the shorter side to 256, center crop 224) matches
//! torchvision's (PIL decode and antialiased bilinear resize) on the foolbox photos,
//! through `scripts/transform_parity.py` and the PyTorch `cargo xtask setup` installed.

mod common;

use basis_models::checkpoint;
use basis_train::data::{center_crop_box, resize_box, Dataset, ImageFolder};
use std::path::Path;

#[test]
fn eval_resize_and_center_crop_match_torchvision() {
    let folder = common::prepared("foolbox").join("imagenet/val");
    let out = common::scratch("transform-parity").join("torchvision.safetensors");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    common::python([
        workspace.join("scripts/transform_parity.py").as_os_str(),
        folder.as_os_str(),
        out.as_os_str(),
    ]);
    let (tensors, _) = checkpoint::read(&out).unwrap();
    let theirs = &tensors["images"];
    let ds = ImageFolder::open(&folder, 3).unwrap();
    assert_eq!(theirs.size(), [ds.len() as i64, 224, 224, 3]);
    let mut worst_mean = 0f64;
    for i in 0..ds.len() {
        let image = ds.get(i).unwrap().image;
        let (h, w, _) = image.dim();
        let ours = resize_box(&image, center_crop_box(h, w, 224, 0.875), 224, 224).unwrap();
        let reference: Vec<u8> = Vec::try_from(theirs.get(i as i64).flatten(0, -1)).unwrap();
        let ours = ours.as_slice().unwrap();
        let mean = ours
            .iter()
            .zip(&reference)
            .map(|(a, b)| (f64::from(*a) - f64::from(*b)).abs())
            .sum::<f64>()
            / ours.len() as f64;
        worst_mean = worst_mean.max(mean);
    }
    eprintln!(
        "worst mean |ours - torchvision| over {} images: {worst_mean:.3} gray levels",
        ds.len()
    );
    // Different JPEG decoders (image's vs libjpeg-turbo's IDCT rounding): measured 0.39
    // gray levels on average for the worst photo. A half-pixel shift of the grid is ~4.
    assert!(worst_mean < 1.0, "{worst_mean}");
}
