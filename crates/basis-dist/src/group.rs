//! A process group: the TCP store rendezvous and a c10d backend (Gloo, or NCCL for CUDA
//! tensors), with collectives on tch tensors.

use crate::ffi;
use crate::launch::Launch;
use crate::DistError;
use std::ffi::CString;
use std::os::raw::c_int;
use std::time::Duration;
use tch::Tensor;

/// Which c10d backend carries the collectives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Gloo: CPU tensors (and CUDA tensors through host copies).
    Gloo,
    /// NCCL: CUDA tensors, one GPU per process (needs a build with the NCCL shim).
    Nccl,
}

impl Backend {
    /// Whether this build carries the NCCL backend (libtorch with CUDA and NCCL's headers
    /// were found when `basis-dist` was compiled).
    pub fn nccl_built() -> bool {
        cfg!(basis_dist_nccl)
    }

    /// NCCL when this process has a CUDA device and the build carries NCCL, else Gloo.
    pub fn default_for(device: tch::Device) -> Self {
        if device.is_cuda() && Self::nccl_built() {
            Backend::Nccl
        } else {
            Backend::Gloo
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Gloo => "gloo",
            Backend::Nccl => "nccl",
        })
    }
}

/// How a group is made.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupOptions {
    /// The backend.
    pub backend: Backend,
    /// How long to wait for the store, for the other ranks to join, and for any collective
    /// (a rank that hangs makes the others fail after this long; one that dies makes them
    /// fail at once).
    pub timeout: Duration,
    /// Gloo's network interface (`GLOO_SOCKET_IFNAME`, as in PyTorch); by default the
    /// loopback address when the store is local, else the address of this host's name.
    pub interface: Option<String>,
}

impl Default for GroupOptions {
    /// Gloo, PyTorch's 30-minute default timeout, interface from `GLOO_SOCKET_IFNAME`.
    fn default() -> Self {
        GroupOptions {
            backend: Backend::Gloo,
            timeout: Duration::from_secs(30 * 60),
            interface: std::env::var("GLOO_SOCKET_IFNAME")
                .ok()
                .filter(|s| !s.is_empty()),
        }
    }
}

struct StoreHandle(*mut ffi::Store);

impl Drop for StoreHandle {
    fn drop(&mut self) {
        // SAFETY: made by bd_store_new, freed once.
        unsafe { ffi::bd_store_free(self.0) }
    }
}

/// The processes of one job, joined through c10d; dropping it closes the connections.
///
/// ```no_run
/// use basis_dist::{GroupOptions, Launch, ProcessGroup};
/// // Under torchrun, srun, or with RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT set:
/// let launch = Launch::from_env()?.expect("started by a launcher");
/// let group = ProcessGroup::init(&launch, &GroupOptions::default())?;
/// let t = tch::Tensor::from_slice(&[group.rank() as f32]);
/// group.all_reduce_sum(&[&t])?; // every rank now holds 0 + 1 + ... + (world - 1)
/// # Ok::<(), basis_dist::DistError>(())
/// ```
pub struct ProcessGroup {
    id: i64,
    _store: StoreHandle,
    rank: usize,
    local_rank: usize,
    world_size: usize,
    backend: Backend,
    timeout: Duration,
}

// SAFETY: the store and backend are c10d objects made for use from several threads (the
// backend queues work to its own threads under its own locks); the Rust side only passes
// them to the shim.
unsafe impl Send for ProcessGroup {}
// SAFETY: see Send.
unsafe impl Sync for ProcessGroup {}

impl std::fmt::Debug for ProcessGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessGroup")
            .field("rank", &self.rank)
            .field("world_size", &self.world_size)
            .field("backend", &self.backend)
            .finish()
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.starts_with("127.") || host == "::1"
}

pub(crate) fn ptrs(tensors: &[&Tensor]) -> Vec<*mut torch_sys::C_tensor> {
    tensors.iter().map(|t| t.as_ptr() as *mut _).collect()
}

impl ProcessGroup {
    /// Meet the other ranks at the store `launch` names and make the backend.
    pub fn init(launch: &Launch, options: &GroupOptions) -> Result<Self, DistError> {
        let ms = options.timeout.as_millis().min(i64::MAX as u128) as i64;
        let host = CString::new(launch.master_addr.clone())
            .map_err(|_| DistError::Launch("MASTER_ADDR holds a NUL byte".into()))?;
        let prefix = CString::new(launch.store_prefix()).unwrap_or_default();
        let mut store = std::ptr::null_mut();
        // SAFETY: valid C strings, out-pointer to a local.
        let made = ffi::check(unsafe {
            ffi::bd_store_new(
                host.as_ptr(),
                launch.master_port,
                launch.hosts_store() as c_int,
                launch.world_size as i64,
                ms,
                prefix.as_ptr(),
                &mut store,
            )
        });
        if let Err(message) = made {
            return Err(DistError::Store {
                addr: launch.master_addr.clone(),
                port: launch.master_port,
                hosting: launch.hosts_store(),
                seconds: options.timeout.as_secs_f64(),
                message,
            });
        }
        let store = StoreHandle(store);
        let mut id = 0i64;
        let made = match options.backend {
            Backend::Gloo => {
                let interface =
                    CString::new(options.interface.clone().unwrap_or_default()).unwrap_or_default();
                let hostname = CString::new(if is_loopback(&launch.master_addr) {
                    "127.0.0.1"
                } else {
                    ""
                })
                .unwrap_or_default();
                // SAFETY: live store, valid C strings, out-pointer to a local.
                ffi::check(unsafe {
                    ffi::bd_group_new_gloo(
                        store.0,
                        launch.rank as c_int,
                        launch.world_size as c_int,
                        ms,
                        interface.as_ptr(),
                        hostname.as_ptr(),
                        0,
                        &mut id,
                    )
                })
            }
            Backend::Nccl => Self::new_nccl(&store, launch, ms, &mut id),
        };
        made.map_err(|message| DistError::Backend {
            backend: options.backend,
            rank: launch.rank,
            world_size: launch.world_size,
            message: message.lines().next().unwrap_or_default().to_string(),
        })?;
        Ok(ProcessGroup {
            id,
            _store: store,
            rank: launch.rank,
            local_rank: launch.local_rank,
            world_size: launch.world_size,
            backend: options.backend,
            timeout: options.timeout,
        })
    }

    #[cfg(basis_dist_nccl)]
    fn new_nccl(store: &StoreHandle, launch: &Launch, ms: i64, id: &mut i64) -> Result<(), String> {
        // SAFETY: live store, out-pointer to a local.
        ffi::check(unsafe {
            ffi::bd_group_new_nccl(
                store.0,
                launch.rank as c_int,
                launch.world_size as c_int,
                ms,
                id,
            )
        })
    }

    #[cfg(not(basis_dist_nccl))]
    fn new_nccl(_: &StoreHandle, _: &Launch, _: i64, _: &mut i64) -> Result<(), String> {
        Err(
            "this build has no NCCL backend (libtorch without CUDA, or NCCL's headers were \
             not found when basis-dist was built); use the Gloo backend"
                .into(),
        )
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// This process's rank among those of its machine (which GPU it takes).
    pub fn local_rank(&self) -> usize {
        self.local_rank
    }

    /// Number of processes.
    pub fn world_size(&self) -> usize {
        self.world_size
    }

    /// The backend carrying the collectives.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Whether this is rank 0.
    pub fn is_main(&self) -> bool {
        self.rank == 0
    }

    pub(crate) fn id(&self) -> i64 {
        self.id
    }

    pub(crate) fn timeout_ms(&self) -> i64 {
        self.timeout.as_millis().min(i64::MAX as u128) as i64
    }

    pub(crate) fn fail(&self, op: &'static str) -> impl FnOnce(String) -> DistError + '_ {
        move |message| DistError::Collective {
            op,
            rank: self.rank,
            world_size: self.world_size,
            message,
        }
    }

    /// Sum every tensor across ranks, in place.
    pub fn all_reduce_sum(&self, tensors: &[&Tensor]) -> Result<(), DistError> {
        self.all_reduce(tensors, 0, "all-reduce (sum)")
    }

    /// Take the element-wise maximum of every tensor across ranks, in place.
    pub fn all_reduce_max(&self, tensors: &[&Tensor]) -> Result<(), DistError> {
        self.all_reduce(tensors, 1, "all-reduce (max)")
    }

    fn all_reduce(
        &self,
        tensors: &[&Tensor],
        op: c_int,
        name: &'static str,
    ) -> Result<(), DistError> {
        let list = ptrs(tensors);
        // SAFETY: live tensors for the call; the shim reduces their storage in place.
        ffi::check(unsafe {
            ffi::bd_all_reduce(self.id, list.as_ptr(), list.len(), op, self.timeout_ms())
        })
        .map_err(self.fail(name))
    }

    /// Start summing `tensor` across ranks; [`Pending::wait`] finishes it.
    pub fn start_all_reduce_sum(&self, tensor: &Tensor) -> Result<Pending<'_>, DistError> {
        let mut work = std::ptr::null_mut();
        // SAFETY: live tensor; the Work keeps its storage alive until freed.
        ffi::check(unsafe {
            ffi::bd_all_reduce_start(self.id, tensor.as_ptr() as *mut _, &mut work)
        })
        .map_err(self.fail("all-reduce (sum)"))?;
        Ok(Pending { work, group: self })
    }

    /// Copy rank `root`'s values of every tensor into the other ranks' tensors.
    pub fn broadcast(&self, tensors: &[&Tensor], root: usize) -> Result<(), DistError> {
        let list = ptrs(tensors);
        // SAFETY: live tensors for the call.
        ffi::check(unsafe {
            ffi::bd_broadcast(
                self.id,
                list.as_ptr(),
                list.len(),
                root as c_int,
                self.timeout_ms(),
            )
        })
        .map_err(self.fail("broadcast"))
    }

    /// Wait until every rank reaches this point.
    pub fn barrier(&self) -> Result<(), DistError> {
        // SAFETY: plain call on a live group.
        ffi::check(unsafe { ffi::bd_barrier(self.id, self.timeout_ms()) })
            .map_err(self.fail("barrier"))
    }

    /// The sum of `x` across ranks, as a new tensor autograd can go through: the backward
    /// pass sums the incoming gradients across ranks, because every rank's loss depends
    /// on the sum. Synchronized batch norm sums its statistics this way. Every rank must
    /// call it, and later run backward through it, in the same order.
    pub fn all_reduce_differentiable(&self, x: &Tensor) -> Result<Tensor, DistError> {
        let mut out = std::ptr::null_mut();
        // SAFETY: live tensor in, a new at::Tensor out that the returned Tensor owns.
        ffi::check(unsafe {
            ffi::bd_all_reduce_differentiable(
                self.id,
                x.as_ptr() as *mut _,
                self.timeout_ms(),
                &mut out,
            )
        })
        .map_err(self.fail("all-reduce (sum, differentiable)"))?;
        // SAFETY: `out` is a fresh heap at::Tensor the shim made for us.
        Ok(unsafe { Tensor::from_ptr(out) })
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: the id was registered by the shim; freeing an unknown id is a no-op.
        unsafe { ffi::bd_group_free(self.id) }
    }
}

/// An all-reduce in flight.
pub struct Pending<'a> {
    work: *mut ffi::Work,
    group: &'a ProcessGroup,
}

impl Pending<'_> {
    /// Block until the reduction is done (or the group's timeout passes).
    pub fn wait(self) -> Result<(), DistError> {
        // SAFETY: live work handle; freed by Drop.
        ffi::check(unsafe { ffi::bd_work_wait(self.work, self.group.timeout_ms()) })
            .map_err(self.group.fail("all-reduce (sum)"))
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        // SAFETY: made by bd_all_reduce_start, freed once.
        unsafe { ffi::bd_work_free(self.work) }
    }
}
