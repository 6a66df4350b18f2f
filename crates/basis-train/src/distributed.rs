//! Data-parallel training over a [`basis_dist::ProcessGroup`]: every process holds the
//! whole model, trains on its part of each batch ([`crate::data::Shard`]), and the
//! gradients are averaged across processes before every optimizer step (DDP's scheme on
//! c10d: buckets all-reduced as backward fills them). Batch norm is local (rank 0's
//! running statistics are kept, as DDP's buffer broadcast does) or synchronized
//! ([`BatchNormMode::Sync`]).

use crate::error::TrainError;
use crate::recipe::{BatchNormMode, DistributedSection, Recipe};
use basis_dist::{OverlappingBuckets, ProcessGroup};
use basis_models::ReplicaSum;
use std::sync::Arc;
use tch::{nn, Tensor};

pub use basis_dist::{Backend, DistError, GroupOptions, Launch, Launcher};

/// The sum across the ranks of a group, for synchronized batch norm.
struct GroupSum(Arc<ProcessGroup>);

impl ReplicaSum for GroupSum {
    fn replica_sum(&self, x: &Tensor) -> Result<Tensor, String> {
        self.0
            .all_reduce_differentiable(x)
            .map_err(|e| e.to_string())
    }
}

/// One process of a data-parallel run.
pub struct DataParallel {
    group: Arc<ProcessGroup>,
    buckets: OverlappingBuckets,
    batch_norm: BatchNormMode,
    /// The run's device: NCCL reduces CUDA tensors only.
    device: tch::Device,
}

impl std::fmt::Debug for DataParallel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataParallel")
            .field("group", &self.group)
            .field("batch_norm", &self.batch_norm)
            .finish()
    }
}

/// The variables of `vs` by name (the same order on every rank).
fn sorted(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut all: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all
}

/// Broadcast `tensors` from rank 0, one flattened tensor per kind (few collectives).
fn broadcast_flat(group: &ProcessGroup, tensors: &[Tensor]) -> Result<(), TrainError> {
    // The same order on every rank.
    let mut kinds: Vec<tch::Kind> = tensors.iter().map(|t| t.kind()).collect();
    kinds.sort_by_key(|k| format!("{k:?}"));
    kinds.dedup();
    for kind in kinds {
        let of_kind: Vec<&Tensor> = tensors.iter().filter(|t| t.kind() == kind).collect();
        let flat = Tensor::f_cat(
            &of_kind
                .iter()
                .map(|t| t.detach().reshape([-1]))
                .collect::<Vec<_>>(),
            0,
        )?;
        group.broadcast(&[&flat], 0)?;
        tch::no_grad(|| -> Result<(), TrainError> {
            let mut offset = 0i64;
            for t in of_kind {
                let n = t.numel() as i64;
                t.shallow_clone()
                    .f_copy_(&flat.f_narrow(0, offset, n)?.f_view_as(t)?)?;
                offset += n;
            }
            Ok(())
        })?;
    }
    Ok(())
}

impl DataParallel {
    /// Data parallelism over `group` for the trainable variables of `vs`.
    pub fn new(
        group: Arc<ProcessGroup>,
        vs: &nn::VarStore,
        config: &DistributedSection,
    ) -> Result<Self, TrainError> {
        let bytes = (config.bucket_mb * (1 << 20) as f64) as usize;
        Ok(DataParallel {
            buckets: OverlappingBuckets::new(group.clone(), &vs.trainable_variables(), bytes)?,
            group,
            batch_norm: config.batch_norm,
            device: vs.device(),
        })
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.group.rank()
    }

    /// Number of processes.
    pub fn world_size(&self) -> usize {
        self.group.world_size()
    }

    /// The process group.
    pub fn group(&self) -> &Arc<ProcessGroup> {
        &self.group
    }

    /// Copy every variable of `vs` (parameters and buffers) from rank 0: all ranks start,
    /// and resume, from the same state.
    pub fn broadcast_all(&self, vs: &nn::VarStore) -> Result<(), TrainError> {
        let all: Vec<Tensor> = sorted(vs).into_iter().map(|(_, t)| t).collect();
        broadcast_flat(&self.group, &all)
    }

    /// Copy the buffers (batch-norm running statistics and counters) of `vs` from rank 0,
    /// so every rank evaluates and saves rank 0's (DDP's buffer broadcast). Parameters are
    /// left alone: averaged gradients keep them equal.
    pub fn broadcast_buffers(&self, vs: &nn::VarStore) -> Result<(), TrainError> {
        let buffers: Vec<Tensor> = sorted(vs)
            .into_iter()
            .filter(|(_, t)| !t.requires_grad())
            .map(|(_, t)| t)
            .collect();
        broadcast_flat(&self.group, &buffers)
    }

    /// Start listening for this step's gradients: call before backward, so each bucket's
    /// all-reduce starts while backward goes on.
    pub fn before_backward(&self) {
        self.buckets.arm();
    }

    /// Finish averaging the gradients across ranks (call between backward and the
    /// optimizer step).
    pub fn average_gradients(&self) -> Result<(), TrainError> {
        Ok(self.buckets.finish()?)
    }

    /// Run a training forward: with synchronized batch norm when the recipe says so.
    pub fn forward<R>(&self, f: impl FnOnce() -> R) -> R {
        match self.batch_norm {
            BatchNormMode::Sync => basis_models::with_synchronized_batch_norm(
                std::rc::Rc::new(GroupSum(self.group.clone())),
                f,
            ),
            BatchNormMode::Local => f(),
        }
    }

    /// Sum `values` across ranks (on the run's device, where NCCL needs them).
    pub fn sum(&self, values: &[f64]) -> Result<Vec<f64>, TrainError> {
        let t = Tensor::f_from_slice(values)?.f_to_device(self.device)?;
        self.group.all_reduce_sum(&[&t])?;
        Ok(Vec::<f64>::try_from(&t.f_to_device(tch::Device::Cpu)?)?)
    }

    /// Wait for every rank.
    pub fn barrier(&self) -> Result<(), TrainError> {
        Ok(self.group.barrier()?)
    }
}

/// Join the job this process was started in (torchrun, srun, or RANK/WORLD_SIZE/
/// MASTER_ADDR/MASTER_PORT) to train `recipe`: `Ok(None)` when no launcher variables are
/// set. The backend follows the rank's device (`train.device` at its local rank): NCCL on
/// a GPU when this build carries it, else Gloo; a device that cannot be had is an error
/// before the rank meets the others.
pub fn join_from_env(recipe: &Recipe) -> Result<Option<Arc<ProcessGroup>>, TrainError> {
    let Some(launch) = Launch::from_env()? else {
        return Ok(None);
    };
    let device = recipe.train.device.resolve(Some(launch.local_rank))?;
    let options = GroupOptions {
        backend: Backend::default_for(device),
        timeout: std::time::Duration::from_secs_f64(recipe.distributed.timeout_s),
        ..GroupOptions::default()
    };
    Ok(Some(Arc::new(ProcessGroup::init(&launch, &options)?)))
}
