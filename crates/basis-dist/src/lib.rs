//! Data-parallel training on libtorch's own c10d, the engine under PyTorch DDP.
//!
//! A small C++ shim (built by this crate's build script against the libtorch `tch` links)
//! exposes c10d's `TCPStore`, `ProcessGroupGloo` (CPU, and CUDA through host copies) and
//! `ProcessGroupNCCL` (CUDA, when the build found NCCL's headers) to Rust:
//!
//! - [`Launch`]: rank, world size and store address from `torchrun`, Slurm's `srun`, or
//!   `RANK`/`WORLD_SIZE`/`MASTER_ADDR`/`MASTER_PORT` set by hand.
//! - [`ProcessGroup`]: all-reduce, broadcast and barrier on `tch` tensors, and a
//!   differentiable all-reduce (for synchronized batch norm).
//! - [`OverlappingBuckets`]: DDP-style bucketed gradient averaging that overlaps backward
//!   (hooks on the parameters start each bucket's all-reduce once it is full), and
//!   [`GradientBuckets`], the same after backward without hooks.
//!
//! Failures are errors, not hangs: a rank that dies closes its connections and the others'
//! next collective fails at once; one that hangs makes them fail after the group's timeout;
//! an unreachable store fails after the same timeout, naming host and port.
//!
//! ```no_run
//! use basis_dist::{GradientBuckets, GroupOptions, Launch, ProcessGroup, DEFAULT_BUCKET_BYTES};
//! use tch::{nn, nn::Module, Device, Tensor};
//!
//! let launch = Launch::from_env()?.expect("run under torchrun, srun, or with RANK etc. set");
//! let group = ProcessGroup::init(&launch, &GroupOptions::default())?;
//! let vs = nn::VarStore::new(Device::Cpu);
//! let model = nn::linear(vs.root(), 4, 2, Default::default());
//! let params = vs.trainable_variables();
//! group.broadcast(&params.iter().collect::<Vec<_>>(), 0)?; // start equal
//! let buckets = GradientBuckets::new(&params, DEFAULT_BUCKET_BYTES);
//! let loss = model.forward(&Tensor::randn([8, 4], tch::kind::FLOAT_CPU)).sum(None);
//! loss.backward();
//! buckets.all_reduce_mean(&group)?; // every rank now holds the mean gradient
//! # Ok::<(), basis_dist::DistError>(())
//! ```

mod ffi;
pub mod grad;
mod group;
pub mod launch;

pub use grad::{GradientBuckets, OverlappingBuckets, DEFAULT_BUCKET_BYTES};
pub use group::{Backend, GroupOptions, Pending, ProcessGroup};
pub use launch::{Launch, Launcher};

/// What can go wrong in a distributed job.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// The launcher's variables are missing or malformed.
    #[error("{0}")]
    Launch(String),
    /// The rendezvous store could not be hosted or reached.
    #[error("{}", store_message(.addr, *.port, *.hosting, *.seconds, .message))]
    Store {
        /// Store host.
        addr: String,
        /// Store port.
        port: u16,
        /// Whether this process was to host it.
        hosting: bool,
        /// The timeout.
        seconds: f64,
        /// What c10d said.
        message: String,
    },
    /// A collective failed: another rank stopped, hung past the timeout, or is unreachable.
    #[error(
        "{op} failed on rank {rank} of {world_size}: another rank stopped or hung (its log says why), or the network failed; c10d said: {message}"
    )]
    Collective {
        /// The collective.
        op: &'static str,
        /// This rank.
        rank: usize,
        /// Number of ranks.
        world_size: usize,
        /// What c10d said.
        message: String,
    },
    /// The backend could not be made (no GPU for NCCL, a build without it...).
    #[error("could not start the {backend} backend on rank {rank} of {world_size}: {message}")]
    Backend {
        /// The backend.
        backend: Backend,
        /// This rank.
        rank: usize,
        /// Number of ranks.
        world_size: usize,
        /// What c10d said.
        message: String,
    },
    /// The ranks disagree on what to reduce.
    #[error("{0}")]
    Mismatch(String),
    /// libtorch refused a tensor operation.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

fn store_message(addr: &str, port: u16, hosting: bool, seconds: f64, message: &str) -> String {
    let first = message.lines().next().unwrap_or(message);
    if hosting {
        format!(
            "could not host the rendezvous store on port {port} (is MASTER_PORT free, and did \
             every rank join within {seconds:.0} s?): {first}"
        )
    } else {
        format!(
            "could not reach the rendezvous store at {addr}:{port} within {seconds:.0} s (are \
             MASTER_ADDR and MASTER_PORT rank 0's, and is rank 0 running?): {first}"
        )
    }
}
