//! A caching layer over CUDA's stream-ordered allocator, as PyTorch's caching allocator keeps
//! its blocks.
//!
//! candle allocates every op's output afresh (`cuMemAllocAsync`) and frees it when the tensor
//! drops (`cuMemFreeAsync`): two driver calls per tensor, about 1400 per ResNet-50 bf16 training
//! step and 7300 per SK-Res2Net-101 step (counted by the CUDA dry run), on the host's critical
//! path when the step waits on its launches. A training step allocates the same sizes every
//! step, so a freed block is kept here under its stream and size and handed to the next
//! allocation of that size on that stream, without the driver.
//!
//! That reuse is what the driver's own pool does for stream-ordered memory: a block freed on a
//! stream may serve any later allocation on the same stream, whose work the stream runs after
//! the freed block's last use. It holds only while each device's work goes to one stream of its
//! own ([`crate::memory::own_streams`]; candle's per-thread stream is one handle for every
//! thread's stream), so the cache is on only then, and not with `DMLP_CUDA_ALLOC_CACHE=0`.
//!
//! cudarc calls the driver's `cuMemAllocAsync` and `cuMemFreeAsync` by name (it links
//! `libcuda.so.1`), so this module defines both in the program (the linker binds cudarc's calls
//! to them) and calls the driver's through `dlsym(RTLD_NEXT)`. The program does not export them,
//! so the CUDA libraries' own allocations (cuBLAS's, cuDNN's) reach the driver as before. An
//! allocation the driver refuses for want of memory gives the blocks kept for its stream back
//! and tries again; so does a cuDNN benchmark before it allocates outside the pool. Blocks are
//! kept by exact size: a stream keeps, of each size, at most as many blocks as were ever live at
//! once.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Addresses, streams and sizes hash well enough by a rotation and one multiplication (Fx's),
/// where std's SipHash would cost more than the rest of a kept block's allocation.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct MulHasher(u64);

impl Hasher for MulHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(u64::from(byte));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type Map<K, V> = HashMap<K, V, BuildHasherDefault<MulHasher>>;

/// Free blocks by stream and size, and the stream and size of every block handed out (a block
/// freed on another stream than its allocation's, or one never seen, goes to the driver).
#[derive(Debug, Default)]
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) struct BlockCache {
    free: Map<(usize, usize), Vec<u64>>,
    live: Map<u64, (usize, usize)>,
    free_bytes: usize,
}

#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
impl BlockCache {
    /// A kept block of `bytes` for `stream`, now handed out.
    pub(crate) fn take(&mut self, stream: usize, bytes: usize) -> Option<u64> {
        let block = self.free.get_mut(&(stream, bytes))?.pop()?;
        self.free_bytes -= bytes;
        self.live.insert(block, (stream, bytes));
        Some(block)
    }

    /// A block the driver allocated, now handed out.
    pub(crate) fn handed_out(&mut self, block: u64, stream: usize, bytes: usize) {
        self.live.insert(block, (stream, bytes));
    }

    /// Keeps a block freed on `stream`; `false` (the caller frees it) when it was not handed out
    /// here or was allocated on another stream.
    pub(crate) fn keep(&mut self, block: u64, stream: usize) -> bool {
        match self.live.get(&block) {
            Some(&(allocated_on, bytes)) if allocated_on == stream => {
                self.live.remove(&block);
                self.free.entry((stream, bytes)).or_default().push(block);
                self.free_bytes += bytes;
                true
            }
            Some(_) => {
                self.live.remove(&block);
                false
            }
            None => false,
        }
    }

    /// Every block kept for `stream`, to give back to the driver.
    pub(crate) fn drain(&mut self, stream: usize) -> Vec<u64> {
        let sizes: Vec<(usize, usize)> = self.free.keys().filter(|(s, _)| *s == stream).copied().collect();
        let mut blocks = Vec::new();
        for key in sizes {
            let kept = self.free.remove(&key).unwrap_or_default();
            self.free_bytes -= key.1 * kept.len();
            blocks.extend(kept);
        }
        blocks
    }

    /// Bytes kept, not handed out.
    pub(crate) fn free_bytes(&self) -> usize {
        self.free_bytes
    }
}

#[cfg(feature = "cuda")]
mod driver {
    use std::ffi::c_void;
    use std::sync::{LazyLock, Mutex, MutexGuard, OnceLock};

    use super::BlockCache;

    type Alloc = unsafe extern "C" fn(*mut u64, usize, *mut c_void) -> u32;
    type Free = unsafe extern "C" fn(u64, *mut c_void) -> u32;

    /// `CUDA_SUCCESS`, and `CUDA_ERROR_OUT_OF_MEMORY`.
    const SUCCESS: u32 = 0;
    const OUT_OF_MEMORY: u32 = 2;

    static CACHE: LazyLock<Mutex<BlockCache>> = LazyLock::new(Default::default);

    fn cache() -> MutexGuard<'static, BlockCache> {
        CACHE.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn enabled() -> bool {
        static ON: OnceLock<bool> = OnceLock::new();
        *ON.get_or_init(|| {
            crate::memory::own_streams() && std::env::var("DMLP_CUDA_ALLOC_CACHE").map_or(true, |v| v != "0")
        })
    }

    /// The driver's function `name` (the next definition after this program's).
    fn next<F: Copy>(name: &std::ffi::CStr) -> F {
        // SAFETY: dlsym with a NUL-terminated name; the pointer is the driver's function of the
        // type the CUDA headers declare, which `F` spells.
        unsafe {
            let pointer = libc::dlsym(libc::RTLD_NEXT, name.as_ptr());
            assert!(!pointer.is_null(), "libcuda has no {name:?}");
            std::mem::transmute_copy::<*mut c_void, F>(&pointer)
        }
    }

    fn driver_alloc() -> Alloc {
        static F: OnceLock<Alloc> = OnceLock::new();
        *F.get_or_init(|| next(c"cuMemAllocAsync"))
    }

    fn driver_free() -> Free {
        static F: OnceLock<Free> = OnceLock::new();
        *F.get_or_init(|| next(c"cuMemFreeAsync"))
    }

    /// Gives every block kept for `stream` back to the driver (before a library allocates
    /// outside the pool, and when the driver runs out of memory), with the stream's context
    /// current. Returns the first error status, or success.
    pub(crate) fn release(stream: *mut c_void) -> u32 {
        let blocks = cache().drain(stream as usize);
        let free = driver_free();
        let mut status = SUCCESS;
        for block in blocks {
            // SAFETY: a block the driver allocated on `stream`, used by nothing queued after this.
            let freed = unsafe { free(block, stream) };
            if status == SUCCESS {
                status = freed;
            }
        }
        status
    }

    /// The driver's `cuMemAllocAsync`, through the cache (see the module docs).
    ///
    /// # Safety
    /// As the driver's: `dptr` is writable, `stream` a stream of the current context.
    #[unsafe(no_mangle)]
    pub(super) unsafe extern "C" fn cuMemAllocAsync(dptr: *mut u64, bytes: usize, stream: *mut c_void) -> u32 {
        let on = enabled() && bytes > 0;
        if on && let Some(block) = cache().take(stream as usize, bytes) {
            // SAFETY: the caller's pointer.
            unsafe { *dptr = block };
            return SUCCESS;
        }
        // SAFETY: the caller's arguments, passed on.
        let mut status = unsafe { driver_alloc()(dptr, bytes, stream) };
        if status == OUT_OF_MEMORY && on && cache().free_bytes() > 0 {
            release(stream);
            // SAFETY: as above.
            status = unsafe { driver_alloc()(dptr, bytes, stream) };
        }
        if status == SUCCESS && on {
            // SAFETY: the driver wrote the block's address.
            cache().handed_out(unsafe { *dptr }, stream as usize, bytes);
        }
        status
    }

    /// The driver's `cuMemFreeAsync`, through the cache (see the module docs).
    ///
    /// # Safety
    /// As the driver's: `block` was allocated and is used no more after the stream's queued work.
    #[unsafe(no_mangle)]
    pub(super) unsafe extern "C" fn cuMemFreeAsync(block: u64, stream: *mut c_void) -> u32 {
        if enabled() && cache().keep(block, stream as usize) {
            return SUCCESS;
        }
        // SAFETY: the caller's arguments, passed on.
        unsafe { driver_free()(block, stream) }
    }
}

/// Gives the blocks kept for `device`'s stream back to the driver's pool (see the module docs).
#[cfg(feature = "cuda")]
pub(crate) fn release(device: &candle_core::cuda_backend::CudaDevice) -> candle_core::Result<()> {
    let stream = device.cuda_stream();
    stream.context().bind_to_thread().map_err(|e| candle_core::Error::Msg(format!("CUDA: {e:?}")))?;
    match driver::release(stream.cu_stream().cast()) {
        0 => Ok(()),
        status => Err(candle_core::Error::Msg(format!("CUDA: giving kept blocks back: error {status}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::BlockCache;

    #[test]
    fn a_freed_block_serves_the_next_allocation_of_its_size_on_its_stream_only() {
        let mut cache = BlockCache::default();
        cache.handed_out(0x1000, 7, 256);
        cache.handed_out(0x2000, 7, 512);
        assert!(cache.keep(0x1000, 7));
        assert_eq!(cache.free_bytes(), 256);
        // Another size or another stream: the driver's.
        assert_eq!(cache.take(7, 512), None);
        assert_eq!(cache.take(8, 256), None);
        assert_eq!(cache.take(7, 256), Some(0x1000));
        assert_eq!(cache.take(7, 256), None);
        assert_eq!(cache.free_bytes(), 0);
        // Handed out again, it is kept again when freed.
        assert!(cache.keep(0x1000, 7));
        assert!(cache.keep(0x2000, 7));
        assert_eq!(cache.free_bytes(), 768);
    }

    #[test]
    fn unknown_blocks_and_blocks_freed_on_another_stream_go_to_the_driver() {
        let mut cache = BlockCache::default();
        assert!(!cache.keep(0x1000, 7), "never handed out here");
        cache.handed_out(0x1000, 7, 256);
        assert!(!cache.keep(0x1000, 9), "freed on another stream than its allocation's");
        // And it is forgotten: a second free of it is not kept either.
        assert!(!cache.keep(0x1000, 7));
        assert_eq!(cache.free_bytes(), 0);
    }

    #[test]
    fn draining_a_stream_gives_back_its_kept_blocks_only() {
        let mut cache = BlockCache::default();
        for (block, stream, bytes) in [(0x1000, 1, 256), (0x2000, 1, 256), (0x3000, 2, 64)] {
            cache.handed_out(block, stream, bytes);
            assert!(cache.keep(block, stream));
        }
        let mut drained = cache.drain(1);
        drained.sort_unstable();
        assert_eq!(drained, [0x1000, 0x2000]);
        assert_eq!(cache.free_bytes(), 64);
        assert_eq!(cache.take(1, 256), None);
        assert_eq!(cache.drain(2), [0x3000]);
        assert_eq!(cache.free_bytes(), 0);
    }
}
