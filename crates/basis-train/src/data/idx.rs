//! The idx format of (Fashion-)MNIST: a big-endian header (`0x00 0x00 type ndim`, then one
//! `u32` per dimension) and the raw values, optionally gzip-compressed.

use super::error::DataError;
use std::io::Read;
use std::path::Path;

/// An idx file of unsigned bytes: its dimensions and as much data as the file holds.
#[derive(Debug, Clone)]
pub struct IdxFile {
    /// Dimensions from the header (`[N, 28, 28]` for images, `[N]` for labels).
    pub dims: Vec<usize>,
    /// The values, row-major; shorter than the header says when the file is truncated.
    pub data: Vec<u8>,
}

impl IdxFile {
    /// Items the header announces (the first dimension).
    pub fn declared(&self) -> usize {
        self.dims.first().copied().unwrap_or(0)
    }

    /// Elements of one item (product of the other dimensions).
    pub fn item_len(&self) -> usize {
        self.dims[1..].iter().product()
    }

    /// Complete items the file really holds.
    pub fn available(&self) -> usize {
        match self.item_len() {
            0 => 0,
            n => (self.data.len() / n).min(self.declared()),
        }
    }
}

/// Read an idx file of unsigned bytes with `ndim` dimensions (gzip if it ends in `.gz`).
pub fn read(path: &Path, ndim: usize) -> Result<IdxFile, DataError> {
    let raw = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let bytes = if path.extension().is_some_and(|e| e == "gz") {
        let mut out = Vec::new();
        // A truncated gzip stream still yields the bytes before the cut.
        let result = flate2::read::GzDecoder::new(raw.as_slice()).read_to_end(&mut out);
        if let Err(e) = result {
            if out.is_empty() {
                return Err(DataError::format(path, format!("not a gzip file ({e})")));
            }
        }
        out
    } else {
        raw
    };
    parse(path, &bytes, ndim)
}

/// Parse idx bytes (already decompressed).
pub fn parse(path: &Path, bytes: &[u8], ndim: usize) -> Result<IdxFile, DataError> {
    let expected_magic = [0u8, 0, 0x08, ndim as u8];
    let magic = bytes.get(..4).ok_or_else(|| {
        DataError::format(
            path,
            format!("{} bytes, too short for an idx header", bytes.len()),
        )
    })?;
    if magic != expected_magic {
        return Err(DataError::format(
            path,
            format!(
                "idx magic {magic:02x?}, expected {expected_magic:02x?} (unsigned bytes, {ndim} dimensions)"
            ),
        ));
    }
    let header = 4 + 4 * ndim;
    let dims_bytes = bytes.get(4..header).ok_or_else(|| {
        DataError::format(
            path,
            format!("header cut short: {} of {header} bytes", bytes.len()),
        )
    })?;
    let dims = dims_bytes
        .chunks(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    Ok(IdxFile {
        dims,
        data: bytes[header..].to_vec(),
    })
}
