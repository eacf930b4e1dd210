//! Host bytes onto a device through page-locked staging buffers.
//!
//! candle uploads a `Vec` from pageable memory, and for such a copy "the driver may synchronize
//! with the stream and stage the copy into pinned memory" (CUDA's API synchronization behaviour):
//! a training batch (9.6 MB of u8 pixels at 64 × 224²) can hold the training thread until the
//! device has finished the work queued before it, so the host cannot queue step `k + 1` while
//! the device runs step `k`. [`Uploader::u8`] copies the bytes into a page-locked buffer of its
//! own and sends them from there asynchronously, as PyTorch's `pin_memory` with `non_blocking`
//! does. A buffer is written again only [`STAGING_DEPTH`] uploads of its length later, after its
//! last copy has finished, so the device may run a step behind the host ([`StagingRing`]).
//!
//! Each buffer carries an event of its own, recorded after each copy and waited on before the
//! host writes the buffer again or frees it. cudarc's `PinnedHostSlice` has such an event, but
//! records it only while the context tracks events across several streams
//! (`is_managing_stream_synchronization`), which [`crate::cuda_device`] turns off: relying on it,
//! the host would overwrite a buffer whose copy the device had not run yet.
//!
//! On the CPU, and on CUDA once a page-locked buffer or its copy fails (the reason is kept:
//! [`Uploader::staging_status`]), an upload is `Tensor::from_vec`.

use std::collections::VecDeque;

use candle_core::{Device, Result, Shape, Tensor};

/// Uploads of one length in flight before a buffer of that length is reused.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
const STAGING_DEPTH: usize = 2;

/// Idle buffers kept in all (enough for two lengths of training and evaluation views each).
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
const STAGING_CAPACITY: usize = 8;

/// Idle staging buffers, oldest first. An upload takes the oldest idle buffer of its length once
/// `depth` of that length are idle (otherwise it allocates one), and gives it back after queuing
/// its copy: each length settles on `depth` buffers used in turn, a buffer written again only
/// `depth` uploads of its length after its last. At most `capacity` idle buffers are kept; past
/// that the oldest is dropped.
#[derive(Debug)]
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) struct StagingRing<B> {
    idle: VecDeque<B>,
    depth: usize,
    capacity: usize,
}

#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
impl<B> StagingRing<B> {
    pub(crate) fn new(depth: usize, capacity: usize) -> Self {
        Self { idle: VecDeque::new(), depth: depth.max(1), capacity: capacity.max(depth.max(1)) }
    }

    /// The buffer for an upload of `len` elements, or `None`: allocate one.
    pub(crate) fn take(&mut self, len: usize, len_of: impl Fn(&B) -> usize) -> Option<B> {
        let idle_of_len = self.idle.iter().filter(|b| len_of(b) == len).count();
        if idle_of_len < self.depth {
            return None;
        }
        let oldest = self.idle.iter().position(|b| len_of(b) == len)?;
        self.idle.remove(oldest)
    }

    /// Returns a buffer whose copy has been queued.
    pub(crate) fn give_back(&mut self, buffer: B) {
        self.idle.push_back(buffer);
        while self.idle.len() > self.capacity {
            self.idle.pop_front();
        }
    }
}

/// Uploads host bytes to one device (see the module docs).
pub struct Uploader {
    device: Device,
    #[cfg(feature = "cuda")]
    staging: std::sync::Mutex<cuda::Staging>,
}

impl std::fmt::Debug for Uploader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uploader").field("device", &self.device).finish_non_exhaustive()
    }
}

impl Uploader {
    pub fn new(device: &Device) -> Self {
        Self {
            device: device.clone(),
            #[cfg(feature = "cuda")]
            staging: std::sync::Mutex::new(cuda::Staging::new()),
        }
    }

    /// `bytes` as a u8 tensor of `shape` on the device.
    ///
    /// # Shapes
    /// `bytes: [shape.elem_count()]` → `shape` (u8).
    pub fn u8(&self, bytes: Vec<u8>, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if bytes.len() != shape.elem_count() {
            candle_core::bail!("upload: {} bytes for a tensor of shape {shape:?}", bytes.len());
        }
        #[cfg(feature = "cuda")]
        if let Device::Cuda(cuda) = &self.device
            && !bytes.is_empty()
            && let Some(tensor) = cuda::Staging::upload(&self.staging, cuda, &bytes, &shape)
        {
            return Ok(tensor);
        }
        Tensor::from_vec(bytes, shape, &self.device)
    }

    /// `Ok` while uploads go through page-locked buffers (or have not been tried); the reason
    /// they stopped; or why there are none (the CPU, a build without CUDA).
    pub fn staging_status(&self) -> std::result::Result<(), String> {
        #[cfg(feature = "cuda")]
        if self.device.is_cuda() {
            return cuda::Staging::status(&self.staging);
        }
        Err(if self.device.is_cpu() { "the CPU needs no staging" } else { "built without the `cuda` feature" }.into())
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use std::sync::Mutex;

    use candle_core::cuda_backend::cudarc::driver::{CudaEvent, CudaStream, DriverError, PinnedHostSlice};
    use candle_core::cuda_backend::{CudaDevice, CudaStorage};
    use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

    use super::{STAGING_CAPACITY, STAGING_DEPTH, StagingRing};

    /// A page-locked buffer and the event recorded after its last copy was queued (see the
    /// module docs for why not the buffer's own).
    struct Staged {
        buffer: PinnedHostSlice<u8>,
        copied: CudaEvent,
    }

    impl Staged {
        fn len(&self) -> usize {
            self.buffer.len()
        }
    }

    impl Drop for Staged {
        fn drop(&mut self) {
            // The buffer is freed after this: its last copy must have run. An event never
            // recorded counts as complete.
            if let Err(e) = self.copied.synchronize() {
                eprintln!("warning: waiting for a staging buffer's last copy before freeing it: {e:?}");
            }
        }
    }

    pub(super) struct Staging {
        ring: StagingRing<Staged>,
        /// Why staging stopped: later uploads go from pageable memory.
        failed: Option<String>,
        /// A one-byte tensor on the device, the input of the op that makes the upload a tensor.
        anchor: Option<Tensor>,
    }

    impl Staging {
        pub(super) fn new() -> Self {
            Self { ring: StagingRing::new(STAGING_DEPTH, STAGING_CAPACITY), failed: None, anchor: None }
        }

        fn lock(staging: &Mutex<Staging>) -> std::sync::MutexGuard<'_, Staging> {
            // A panic inside leaves at worst a buffer not given back.
            staging.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
        }

        pub(super) fn status(staging: &Mutex<Staging>) -> Result<(), String> {
            Self::lock(staging).failed.clone().map_or(Ok(()), Err)
        }

        /// `bytes` on the device through a staging buffer; `None` (and staging off from then on)
        /// if that fails.
        pub(super) fn upload(
            staging: &Mutex<Staging>,
            cuda: &CudaDevice,
            bytes: &[u8],
            shape: &Shape,
        ) -> Option<Tensor> {
            let mut staging = Self::lock(staging);
            if staging.failed.is_some() {
                return None;
            }
            match staging.try_upload(cuda, bytes, shape) {
                Ok(tensor) => Some(tensor),
                Err(e) => {
                    let reason = format!("page-locked staging failed, uploads go from pageable memory: {e}");
                    eprintln!("warning: {reason}");
                    staging.failed = Some(reason);
                    None
                }
            }
        }

        fn try_upload(&mut self, cuda: &CudaDevice, bytes: &[u8], shape: &Shape) -> candle_core::Result<Tensor> {
            let stream = cuda.cuda_stream();
            let mut staged = match self.ring.take(bytes.len(), Staged::len) {
                Some(staged) => staged,
                None => Staged {
                    // SAFETY: every byte is written below before the copy reads it.
                    buffer: unsafe { stream.context().alloc_pinned::<u8>(bytes.len()) }
                        .map_err(|e| driver("cuMemHostAlloc", e))?,
                    copied: stream.context().new_event(None).map_err(|e| driver("cuEventCreate", e))?,
                },
            };
            // The buffer's last copy must have run before the host writes it again.
            staged.copied.synchronize().map_err(|e| driver("waiting for a staging buffer's last copy", e))?;
            staged.buffer.as_mut_slice().map_err(|e| driver("a staging buffer", e))?.copy_from_slice(bytes);
            // SAFETY: the copy queued next writes every byte before any later work reads them.
            let mut target = unsafe { cuda.alloc::<u8>(bytes.len()) }?;
            if let Err(e) = queue_copy(&stream, &staged, &mut target) {
                // Whether the copy was queued or not, it must not outlive the buffer.
                if let Err(sync) = stream.synchronize() {
                    eprintln!("warning: synchronising after a failed staged copy: {sync:?}");
                }
                return Err(e);
            }
            self.ring.give_back(staged);
            let anchor = match &self.anchor {
                Some(anchor) => anchor.clone(),
                None => self
                    .anchor
                    .insert(Tensor::zeros(1, candle_core::DType::U8, &candle_core::Device::Cuda(cuda.clone()))?)
                    .clone(),
            };
            let op = Adopt {
                storage: std::cell::RefCell::new(Some(CudaStorage::wrap_cuda_slice(target, cuda.clone()))),
                shape: shape.clone(),
            };
            anchor.apply_op1_no_bwd(&op)
        }
    }

    /// Queues the copy of `staged` into `target`, then the record of `staged.copied` after it.
    fn queue_copy(
        stream: &std::sync::Arc<CudaStream>,
        staged: &Staged,
        target: &mut candle_core::cuda_backend::cudarc::driver::CudaSlice<u8>,
    ) -> candle_core::Result<()> {
        stream.memcpy_htod(&staged.buffer, target).map_err(|e| driver("cuMemcpyHtoDAsync", e))?;
        staged.copied.record(stream).map_err(|e| driver("cuEventRecord", e))
    }

    fn driver(what: &str, e: DriverError) -> candle_core::Error {
        candle_core::Error::Msg(format!("{what}: {e:?}"))
    }

    /// Makes an uploaded buffer a tensor: candle builds tensors from storage only inside its
    /// ops, so the buffer is handed over as this op's output (its input, `anchor`, is unused).
    struct Adopt {
        storage: std::cell::RefCell<Option<CudaStorage>>,
        shape: Shape,
    }

    impl CustomOp1 for Adopt {
        fn name(&self) -> &'static str {
            "upload"
        }

        fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
            candle_core::bail!("upload: a CUDA buffer adopted on the CPU")
        }

        fn cuda_fwd(&self, _: &CudaStorage, _: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
            match self.storage.borrow_mut().take() {
                Some(storage) => Ok((storage, self.shape.clone())),
                None => candle_core::bail!("upload: the buffer was adopted already"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A buffer with an identity, to follow which one each upload writes.
    #[derive(Debug)]
    struct Buffer {
        id: usize,
        len: usize,
    }

    #[test]
    fn a_buffer_is_written_again_only_depth_uploads_of_its_length_later() {
        let mut ring = StagingRing::new(STAGING_DEPTH, STAGING_CAPACITY);
        let mut made = 0;
        let mut writes: std::collections::HashMap<usize, Vec<usize>> = Default::default();
        // Training batches of one length, a short last batch, evaluation views of two more.
        let lengths = [5, 5, 5, 7, 5, 5, 9, 11, 9, 11, 9, 5, 5, 7, 5];
        for (upload, &len) in lengths.iter().enumerate() {
            let buffer = ring.take(len, |b: &Buffer| b.len).unwrap_or_else(|| {
                made += 1;
                Buffer { id: made, len }
            });
            assert_eq!(buffer.len, len);
            writes.entry(buffer.id).or_default().push(upload);
            ring.give_back(buffer);
        }
        // Two buffers per length, each used in turn.
        assert_eq!(made, 2 * 4);
        for uses in writes.values() {
            let len = lengths[uses[0]];
            for pair in uses.windows(2) {
                let between = lengths[pair[0] + 1..pair[1]].iter().filter(|&&l| l == len).count();
                assert!(
                    between + 1 >= STAGING_DEPTH,
                    "a buffer of {len} rewritten {between} uploads of its length later"
                );
            }
        }
        assert!(ring.idle.len() <= STAGING_CAPACITY);
    }

    #[test]
    fn past_its_capacity_the_ring_drops_the_oldest_idle_buffer() {
        let mut ring = StagingRing::new(2, 3);
        for id in 0..5 {
            ring.give_back(Buffer { id, len: id });
        }
        let ids: Vec<usize> = ring.idle.iter().map(|b| b.id).collect();
        assert_eq!(ids, [2, 3, 4]);
        // One idle buffer of a length is below the depth: the upload allocates.
        assert!(ring.take(4, |b| b.len).is_none());
    }

    #[test]
    fn on_the_cpu_an_upload_is_the_bytes_as_a_tensor_and_a_wrong_length_an_error() {
        let uploader = Uploader::new(&Device::Cpu);
        let t = uploader.u8(vec![1, 2, 3, 250, 0, 7], (2, 3)).unwrap();
        assert_eq!(t.dims(), [2, 3]);
        assert_eq!(t.to_vec2::<u8>().unwrap(), [[1, 2, 3], [250, 0, 7]]);
        let err = uploader.u8(vec![1, 2, 3], (2, 3)).unwrap_err().to_string();
        assert!(err.contains("3 bytes for a tensor of shape [2, 3]"), "{err}");
        assert!(uploader.staging_status().is_err());
    }
}
