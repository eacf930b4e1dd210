//! Gradients summed between GPUs by NCCL (feature `nccl`): one communicator per device, each
//! owned by its replica's thread. Within one process `ncclCommInitAll`; across processes and
//! nodes `ncclCommInitRank` from the unique id node 0 made and its rendezvous handed out
//! (`crate::cluster`), a process's devices initialised inside one NCCL group. One H200 ran both
//! initialisations with one rank (session 16, `gpu-check`); no machine with several GPUs has run
//! the multi-process path (none with two nodes was available).

use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::CudaStorage;
use candle_core::cuda_backend::cudarc::nccl::safe::{Comm, Id, ReduceOp, group_end, group_start};
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};

use crate::TrainError;
use crate::parallel::Collective;

/// An NCCL communicator shared between a collective and the ops it runs.
struct SharedComm(Comm);

// SAFETY: an NCCL communicator may be used from any thread as long as one thread at a time
// uses it. Each is owned by one replica, whose step runs on one thread at a time.
unsafe impl Send for SharedComm {}
// SAFETY: as above; the op holding a reference runs on the replica's thread only.
unsafe impl Sync for SharedComm {}

/// One GPU's rank in a group of GPUs of this process.
pub struct NcclCollective {
    comm: Arc<SharedComm>,
    rank: usize,
    world: usize,
}

impl std::fmt::Debug for NcclCollective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NcclCollective").field("rank", &self.rank).field("world", &self.world).finish()
    }
}

impl NcclCollective {
    /// A group over `devices` (CUDA, each once), one collective per device in order.
    pub fn group(devices: &[Device]) -> Result<Vec<Self>, TrainError> {
        let streams = devices
            .iter()
            .map(|device| match device {
                Device::Cuda(cuda) => Ok(cuda.cuda_stream()),
                other => Err(TrainError::Parallel(format!("NCCL sums between CUDA devices, not {other:?}"))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let comms = Comm::from_devices(streams).map_err(|e| TrainError::Parallel(format!("NCCL: {e:?}")))?;
        let world = comms.len();
        Ok(comms
            .into_iter()
            .enumerate()
            .map(|(rank, comm)| NcclCollective { comm: Arc::new(SharedComm(comm)), rank, world })
            .collect())
    }
}

/// NCCL's unique id for a job spanning processes (node 0 makes it; see [`crate::join`]).
pub fn nccl_unique_id() -> Result<Vec<u8>, String> {
    let id = Id::new().map_err(|e| format!("{e:?}"))?;
    Ok(id.internal().iter().map(|&c| c as u8).collect())
}

impl NcclCollective {
    /// This process's devices as global ranks `first_rank..` of `world`, joined through the
    /// unique id `id` (128 bytes, from [`nccl_unique_id`] on node 0).
    pub fn group_of_ranks(
        devices: &[Device],
        first_rank: usize,
        world: usize,
        id: &[u8],
    ) -> Result<Vec<Self>, TrainError> {
        let internal: [std::ffi::c_char; 128] = id
            .iter()
            .map(|&b| b as std::ffi::c_char)
            .collect::<Vec<_>>()
            .try_into()
            .map_err(|_| TrainError::Parallel(format!("an NCCL unique id has 128 bytes, not {}", id.len())))?;
        let id = Id::uninit(internal);
        let nccl = |e| TrainError::Parallel(format!("NCCL: {e:?}"));
        // One thread initialising several devices' ranks does so inside one group.
        group_start().map_err(nccl)?;
        let comms = devices
            .iter()
            .enumerate()
            .map(|(index, device)| match device {
                Device::Cuda(cuda) => {
                    let stream = cuda.cuda_stream();
                    stream.context().bind_to_thread().map_err(|e| TrainError::Parallel(format!("CUDA: {e:?}")))?;
                    Comm::from_rank(stream, first_rank + index, world, id).map_err(nccl)
                }
                other => Err(TrainError::Parallel(format!("NCCL sums between CUDA devices, not {other:?}"))),
            })
            .collect::<Vec<_>>();
        group_end().map_err(nccl)?;
        comms
            .into_iter()
            .enumerate()
            .map(|(index, comm)| {
                comm.map(|comm| NcclCollective { comm: Arc::new(SharedComm(comm)), rank: first_rank + index, world })
            })
            .collect()
    }
}

/// `all_reduce(sum)` of one contiguous f32 tensor into a new one (forward only).
struct AllReduceSum(Arc<SharedComm>);

impl CustomOp1 for AllReduceSum {
    fn name(&self) -> &'static str {
        "nccl-all-reduce-sum"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("NCCL sums CUDA tensors only")
    }

    fn cuda_fwd(&self, storage: &CudaStorage, layout: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("nccl all-reduce needs a contiguous tensor")
        };
        let source = storage.as_cuda_slice::<f32>()?.slice(start..end);
        let device = storage.device().clone();
        // SAFETY: every element is written by the all-reduce before anything reads it.
        let mut summed = unsafe { device.alloc::<f32>(end - start) }?;
        self.0
            .0
            .all_reduce(&source, &mut summed, &ReduceOp::Sum)
            .map_err(|e| candle_core::Error::Msg(format!("NCCL all-reduce: {e:?}")))?;
        Ok((CudaStorage::wrap_cuda_slice(summed, device), layout.shape().clone()))
    }
}

impl Collective for NcclCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    /// One all-reduce over every tensor flattened into one buffer, split back after.
    fn all_reduce_sum(&mut self, tensors: &[Tensor]) -> Result<Vec<Tensor>, TrainError> {
        let flat = tensors.iter().map(|t| t.to_dtype(DType::F32)?.flatten_all()).collect::<Result<Vec<_>, _>>()?;
        let summed = Tensor::cat(&flat, 0)?.contiguous()?.apply_op1_no_bwd(&AllReduceSum(self.comm.clone()))?;
        let mut out = Vec::with_capacity(tensors.len());
        let mut start = 0;
        for tensor in tensors {
            let len = tensor.elem_count();
            out.push(summed.narrow(0, start, len)?.reshape(tensor.dims())?);
            start += len;
        }
        Ok(out)
    }
}
