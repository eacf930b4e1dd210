//! Gradients summed between GPUs by NCCL (feature `nccl`): one communicator per device of one
//! process (`ncclCommInitAll`), each owned by its replica's thread.
//!
//! Multi-node training would create each rank's communicator from a shared NCCL unique id
//! (`Comm::from_rank`), the id written by rank 0 to a file every node reads or sent to an address
//! given on the command line; that is not built (nothing here can test it).

use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::CudaStorage;
use candle_core::cuda_backend::cudarc::nccl::safe::{Comm, ReduceOp};
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
