//! [`ImageFolder`]: images in `<root>/<class>/<file>`, as torchvision's `ImageFolder`.

use super::dataset::{Dataset, Sample};
use super::error::DataError;
use ndarray::Array3;
use std::path::{Path, PathBuf};

/// Extensions read as images (case-insensitive).
pub const IMAGE_EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

/// A folder of class folders (the ImageNet layout: `train/n01440764/*.JPEG`). Classes are
/// the sorted folder names, their index the position in that order, as in torchvision.
/// Only the list of files is kept in memory; each image is decoded when it is read.
#[derive(Debug)]
pub struct ImageFolder {
    root: PathBuf,
    classes: Vec<String>,
    files: Vec<(PathBuf, i64)>,
    channels: usize,
    /// Class folders that hold no image.
    empty_classes: Vec<String>,
}

impl ImageFolder {
    /// List `root`, decoding images as RGB (`channels` 3) or grayscale (1).
    pub fn open(root: &Path, channels: usize) -> Result<Self, DataError> {
        if channels != 1 && channels != 3 {
            return Err(DataError::Config(format!(
                "images are read with 1 or 3 channels, not {channels}"
            )));
        }
        let read_dir = |dir: &Path| -> Result<Vec<PathBuf>, DataError> {
            let mut entries = std::fs::read_dir(dir)
                .map_err(|e| DataError::io(dir, e))?
                .map(|e| e.map(|e| e.path()).map_err(|err| DataError::io(dir, err)))
                .collect::<Result<Vec<_>, _>>()?;
            entries.sort();
            Ok(entries)
        };
        let class_dirs: Vec<PathBuf> = read_dir(root)?.into_iter().filter(|p| p.is_dir()).collect();
        if class_dirs.is_empty() {
            return Err(DataError::Empty {
                path: root.to_path_buf(),
                problem: "no class folders; expected <root>/<class>/<image files>".into(),
            });
        }
        let mut classes = Vec::new();
        let mut files = Vec::new();
        let mut empty_classes = Vec::new();
        for (label, dir) in class_dirs.iter().enumerate() {
            let name = dir
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .to_string();
            let before = files.len();
            for path in read_dir(dir)? {
                let is_image = path
                    .extension()
                    .map(|e| e.to_string_lossy().to_lowercase())
                    .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.as_str()));
                if path.is_file() && is_image {
                    files.push((path, label as i64));
                }
            }
            if files.len() == before {
                empty_classes.push(name.clone());
            }
            classes.push(name);
        }
        if files.is_empty() {
            return Err(DataError::Empty {
                path: root.to_path_buf(),
                problem: format!(
                    "{} class folders but no {} files in them",
                    classes.len(),
                    IMAGE_EXTENSIONS.join("/")
                ),
            });
        }
        Ok(Self {
            root: root.to_path_buf(),
            classes,
            files,
            channels,
            empty_classes,
        })
    }

    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Class folders that hold no image (they keep their index, so labels do not shift).
    pub fn empty_classes(&self) -> &[String] {
        &self.empty_classes
    }

    /// The file of sample `index`.
    pub fn path(&self, index: usize) -> Option<&Path> {
        self.files.get(index).map(|(p, _)| p.as_path())
    }
}

/// Decode an image file into `[height, width, channels]` bytes (1 or 3 channels).
pub fn decode(path: &Path, channels: usize) -> Result<Array3<u8>, DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    // JPEG decoders fill a cut-off file with gray; like PIL, call it truncated instead.
    let is_jpeg = bytes.starts_with(&[0xFF, 0xD8]);
    let tail = &bytes[bytes.len().saturating_sub(1024)..];
    if is_jpeg && !tail.windows(2).any(|w| w == [0xFF, 0xD9]) {
        return Err(DataError::sample(
            path.display().to_string(),
            "truncated JPEG (no end-of-image marker)",
        ));
    }
    let image = image::load_from_memory(&bytes).map_err(|e| {
        DataError::sample(path.display().to_string(), format!("cannot decode: {e}"))
    })?;
    let (w, h) = (image.width() as usize, image.height() as usize);
    let raw = if channels == 1 {
        image.into_luma8().into_raw()
    } else {
        image.into_rgb8().into_raw()
    };
    Array3::from_shape_vec((h, w, channels), raw)
        .map_err(|e| DataError::sample(path.display().to_string(), e.to_string()))
}

impl Dataset for ImageFolder {
    fn len(&self) -> usize {
        self.files.len()
    }
    fn classes(&self) -> &[String] {
        &self.classes
    }
    fn channels(&self) -> usize {
        self.channels
    }
    fn get(&self, index: usize) -> Result<Sample, DataError> {
        let (path, label) = self.files.get(index).ok_or_else(|| {
            DataError::sample(
                format!("{} #{index}", self.root.display()),
                format!(
                    "index out of range (the folder has {} images)",
                    self.files.len()
                ),
            )
        })?;
        Ok(Sample {
            image: decode(path, self.channels)?,
            label: *label,
        })
    }
    fn describe(&self, index: usize) -> String {
        self.path(index)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| format!("{} #{index}", self.root.display()))
    }
}
