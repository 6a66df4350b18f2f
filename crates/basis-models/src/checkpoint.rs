//! Weights as safetensors: the format torchvision/`safetensors.torch` read and write.
//!
//! Writing is atomic (a temporary file beside the target, fsync, rename), so a crash never
//! leaves half a checkpoint where a good one was. Loading checks every tensor before it
//! copies any: a missing, unexpected or misshapen tensor is an error naming it, and the
//! model is left as it was. `num_batches_tracked` counters may be absent from a file (some
//! exporters drop them); every other tensor must match.

use crate::error::{ModelError, Result};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use tch::{nn, Device, Kind, Tensor};

/// Metadata stored in the file's header (`__metadata__`), for example the preset.
pub type Metadata = BTreeMap<String, String>;

fn dtype_name(kind: Kind) -> Option<&'static str> {
    Some(match kind {
        Kind::Float => "F32",
        Kind::Double => "F64",
        Kind::Half => "F16",
        Kind::BFloat16 => "BF16",
        Kind::Int64 => "I64",
        Kind::Int => "I32",
        Kind::Int16 => "I16",
        Kind::Int8 => "I8",
        Kind::Uint8 => "U8",
        Kind::Bool => "BOOL",
        _ => return None,
    })
}

fn dtype_kind(name: &str) -> Option<Kind> {
    Some(match name {
        "F32" => Kind::Float,
        "F64" => Kind::Double,
        "F16" => Kind::Half,
        "BF16" => Kind::BFloat16,
        "I64" => Kind::Int64,
        "I32" => Kind::Int,
        "I16" => Kind::Int16,
        "I8" => Kind::Int8,
        "U8" => Kind::Uint8,
        "BOOL" => Kind::Bool,
        _ => return None,
    })
}

fn io_error(path: &Path, source: std::io::Error) -> ModelError {
    ModelError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn bad_file(path: &Path, problem: impl Into<String>) -> ModelError {
    ModelError::Checkpoint {
        path: path.display().to_string(),
        problem: problem.into(),
    }
}

/// Write named tensors (sorted by name) and `metadata` to `path`, atomically.
pub fn write(path: &Path, tensors: &[(String, Tensor)], metadata: &Metadata) -> Result<()> {
    let mut header = Map::new();
    if !metadata.is_empty() {
        header.insert("__metadata__".into(), json!(metadata));
    }
    let mut sorted: Vec<&(String, Tensor)> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut blobs = Vec::with_capacity(sorted.len());
    let mut offset = 0usize;
    for (name, tensor) in sorted {
        let kind = tensor.f_kind()?;
        let dtype = dtype_name(kind).ok_or_else(|| {
            bad_file(
                path,
                format!("tensor {name} has unsupported dtype {kind:?}"),
            )
        })?;
        let cpu = tensor
            .f_detach()?
            .f_to_device(Device::Cpu)?
            .f_contiguous()?;
        let numel = cpu.numel();
        let mut bytes = vec![0u8; numel * kind.elt_size_in_bytes()];
        cpu.f_copy_data_u8(&mut bytes, numel)?;
        header.insert(
            name.clone(),
            json!({"dtype": dtype, "shape": cpu.size(), "data_offsets": [offset, offset + bytes.len()]}),
        );
        offset += bytes.len();
        blobs.push(bytes);
    }
    let mut header = serde_json::to_vec(&Value::Object(header))
        .map_err(|e| bad_file(path, format!("could not encode the header: {e}")))?;
    // The data starts 8-aligned, as the reference implementation writes it.
    while header.len() % 8 != 0 {
        header.push(b' ');
    }
    crate::atomic::write_with(path, |file| {
        file.write_all(&(header.len() as u64).to_le_bytes())?;
        file.write_all(&header)?;
        for blob in &blobs {
            file.write_all(blob)?;
        }
        Ok(())
    })
    .map_err(|e| {
        if e.raw_os_error() == Some(28) {
            let bytes = 8 + header.len() + blobs.iter().map(Vec::len).sum::<usize>();
            bad_file(
                path,
                format!(
                    "the disk is full ({e}); this file needs {:.1} MB, and the previous checkpoint is kept",
                    bytes as f64 / 1e6
                ),
            )
        } else {
            io_error(path, e)
        }
    })
}

/// Read every tensor of a safetensors file (on the CPU) and its metadata.
pub fn read(path: &Path) -> Result<(BTreeMap<String, Tensor>, Metadata)> {
    let bytes = std::fs::read(path).map_err(|e| io_error(path, e))?;
    let not_safetensors = || bad_file(path, "not a safetensors file (bad header)");
    let len = bytes
        .get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .and_then(|b| usize::try_from(u64::from_le_bytes(b)).ok())
        .ok_or_else(not_safetensors)?;
    let header_end = 8usize.checked_add(len).ok_or_else(not_safetensors)?;
    let header: Map<String, Value> = bytes
        .get(8..header_end)
        .and_then(|h| serde_json::from_slice(h).ok())
        .ok_or_else(not_safetensors)?;
    let data = &bytes[header_end..];
    let mut tensors = BTreeMap::new();
    let mut metadata = Metadata::new();
    for (name, entry) in header {
        if name == "__metadata__" {
            if let Some(map) = entry.as_object() {
                for (k, v) in map {
                    metadata.insert(k.clone(), v.as_str().unwrap_or_default().to_string());
                }
            }
            continue;
        }
        let dtype = entry["dtype"].as_str().unwrap_or_default();
        let kind = dtype_kind(dtype).ok_or_else(|| {
            bad_file(
                path,
                format!("tensor {name} has unsupported dtype {dtype:?}"),
            )
        })?;
        let shape: Vec<i64> = entry["shape"]
            .as_array()
            .map(|dims| dims.iter().filter_map(Value::as_i64).collect())
            .ok_or_else(|| bad_file(path, format!("tensor {name} has no shape")))?;
        let offsets: Vec<usize> = entry["data_offsets"]
            .as_array()
            .map(|o| {
                o.iter()
                    .filter_map(|v| v.as_u64().map(|v| v as usize))
                    .collect()
            })
            .unwrap_or_default();
        let expected = shape
            .iter()
            .try_fold(kind.elt_size_in_bytes(), |bytes, &d| {
                usize::try_from(d).ok().and_then(|d| bytes.checked_mul(d))
            })
            .ok_or_else(|| {
                bad_file(
                    path,
                    format!("tensor {name} has an impossible shape {shape:?}"),
                )
            })?;
        let blob = match offsets.as_slice() {
            &[start, end] if end >= start && end - start == expected => data.get(start..end),
            _ => None,
        }
        .ok_or_else(|| {
            bad_file(
                path,
                format!("tensor {name}: data is truncated or misplaced"),
            )
        })?;
        tensors.insert(name, Tensor::f_from_data_size(blob, &shape, kind)?);
    }
    Ok((tensors, metadata))
}

/// Whether a variable is a batch-norm counter that files may omit.
fn optional(name: &str) -> bool {
    name.ends_with("num_batches_tracked")
}

/// Load `path` into `vs`: every variable must be in the file with its shape, and every
/// tensor of the file must be a variable. On any mismatch nothing is copied.
pub fn load(vs: &nn::VarStore, path: &Path) -> Result<Metadata> {
    let (tensors, metadata) = read(path)?;
    assign(vs, path, &tensors)?;
    Ok(metadata)
}

/// Copy `tensors` (read from `path`) into `vs`, all or nothing, as [`load`] does.
pub fn assign(vs: &nn::VarStore, path: &Path, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
    // Sorted, so the tensor an error names does not depend on hash order.
    let variables: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    let mismatch = |problem: String| bad_file(path, problem);
    for (name, var) in &variables {
        match tensors.get(name) {
            None if optional(name) => {}
            None => return Err(mismatch(format!("tensor {name} is missing"))),
            Some(t) if t.size() != var.size() => {
                return Err(mismatch(format!(
                    "tensor {name} has shape {:?}, the model expects {:?}",
                    t.size(),
                    var.size()
                )))
            }
            Some(_) => {}
        }
    }
    if let Some(extra) = tensors.keys().find(|k| !variables.contains_key(*k)) {
        return Err(mismatch(format!(
            "tensor {extra} is not part of this model"
        )));
    }
    tch::no_grad(|| -> Result<()> {
        for (name, var) in &variables {
            if let Some(t) = tensors.get(name) {
                var.shallow_clone()
                    .f_copy_(&t.f_to_kind(var.f_kind()?)?.f_to_device(var.device())?)?;
            }
        }
        Ok(())
    })
}

/// Save every variable of `vs` with `metadata`.
pub fn save(vs: &nn::VarStore, path: &Path, metadata: &Metadata) -> Result<()> {
    let tensors: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    write(path, &tensors, metadata)
}
