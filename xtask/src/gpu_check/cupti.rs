//! Which kernels a CUDA step spends its device time in: CUPTI's activity API (loaded at run
//! time from `libcupti.so.13`, PyTorch's NVIDIA wheels hold it; never linked) records every
//! kernel, memset and memcpy between [`Trace::start`] and [`Trace::finish`], with its start and
//! end on the device; the profile sums them by name.
//!
//! The record layouts read here are CUDA 13.0's `cupti_activity.h` (`CUpti_ActivityKernel10`,
//! `CUpti_ActivityMemset4`, `CUpti_ActivityMemcpy6`): the kind at byte 0, start and end
//! (nanoseconds) at 16 and 24, a kernel's name pointer at 104, a copy's kind at 4. A profile is
//! a diagnosis, not a result: where CUPTI is missing or refuses, the check says so and goes on.

use std::collections::HashMap;
use std::ffi::{CStr, c_char, c_void};
use std::sync::{Mutex, OnceLock};

const KIND_MEMCPY: u32 = 1;
const KIND_MEMSET: u32 = 2;
const KIND_CONCURRENT_KERNEL: u32 = 10;
const CUPTI_SUCCESS: i32 = 0;
/// `cuptiActivityFlushAll`'s flag that also flushes buffers still being filled.
const FLUSH_FORCED: u32 = 1;
const BUFFER_BYTES: usize = 8 << 20;

type RequestFn = extern "C" fn(*mut *mut u8, *mut usize, *mut usize);
type CompleteFn = extern "C" fn(*mut c_void, u32, *mut u8, usize, usize);

type RegisterFn = unsafe extern "C" fn(RequestFn, CompleteFn) -> i32;
/// `cuptiActivityEnable`, `cuptiActivityDisable`, `cuptiActivityFlushAll`.
type KindFn = unsafe extern "C" fn(u32) -> i32;
type NextRecordFn = unsafe extern "C" fn(*mut u8, usize, *mut *mut u8) -> i32;

struct Cupti {
    register: RegisterFn,
    enable: KindFn,
    disable: KindFn,
    flush_all: KindFn,
    next_record: NextRecordFn,
}

static CUPTI: OnceLock<Result<Cupti, String>> = OnceLock::new();
/// Device nanoseconds and launches per name, and the earliest start and latest end, filled by
/// CUPTI's buffer callback.
static SEEN: Mutex<Option<Seen>> = Mutex::new(None);

#[derive(Default)]
struct Seen {
    by_name: HashMap<String, (u64, u64)>,
    first_start: u64,
    last_end: u64,
}

fn cupti() -> Result<&'static Cupti, String> {
    CUPTI
        .get_or_init(|| {
            // SAFETY: dlopen/dlsym with NUL-terminated names; each symbol is cast to the type
            // cupti_activity.h declares for it, and the library stays open for the process.
            unsafe {
                let library = [c"libcupti.so.13", c"libcupti.so"]
                    .iter()
                    .map(|name| libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL))
                    .find(|handle| !handle.is_null())
                    .ok_or("libcupti.so.13 not found (LD_LIBRARY_PATH)")?;
                let symbol = |name: &CStr| {
                    let found = libc::dlsym(library, name.as_ptr());
                    if found.is_null() { Err(format!("CUPTI has no {name:?}")) } else { Ok(found) }
                };
                Ok(Cupti {
                    register: std::mem::transmute::<*mut c_void, RegisterFn>(symbol(
                        c"cuptiActivityRegisterCallbacks",
                    )?),
                    enable: std::mem::transmute::<*mut c_void, KindFn>(symbol(c"cuptiActivityEnable")?),
                    disable: std::mem::transmute::<*mut c_void, KindFn>(symbol(c"cuptiActivityDisable")?),
                    flush_all: std::mem::transmute::<*mut c_void, KindFn>(symbol(c"cuptiActivityFlushAll")?),
                    next_record: std::mem::transmute::<*mut c_void, NextRecordFn>(symbol(
                        c"cuptiActivityGetNextRecord",
                    )?),
                })
            }
        })
        .as_ref()
        .map_err(Clone::clone)
}

fn buffer_layout() -> std::alloc::Layout {
    std::alloc::Layout::from_size_align(BUFFER_BYTES, 8).expect("a valid layout")
}

extern "C" fn buffer_requested(buffer: *mut *mut u8, size: *mut usize, max_records: *mut usize) {
    // SAFETY: CUPTI passes valid out-pointers; the buffer is 8-byte aligned, as it requires,
    // and freed in `buffer_completed`.
    unsafe {
        *buffer = std::alloc::alloc(buffer_layout());
        *size = if (*buffer).is_null() { 0 } else { BUFFER_BYTES };
        *max_records = 0;
    }
}

fn read<T: Copy>(record: *const u8, offset: usize) -> T {
    // SAFETY: `offset` lies inside the record of the kind it was read for (layouts above).
    unsafe { std::ptr::read_unaligned(record.add(offset).cast::<T>()) }
}

extern "C" fn buffer_completed(_context: *mut c_void, _stream: u32, buffer: *mut u8, _size: usize, valid: usize) {
    if buffer.is_null() {
        return;
    }
    if let (Ok(api), Ok(mut seen)) = (cupti(), SEEN.lock())
        && let Some(seen) = seen.as_mut()
    {
        let mut record: *mut u8 = std::ptr::null_mut();
        // SAFETY: CUPTI walks its own buffer, `valid` bytes of records.
        while unsafe { (api.next_record)(buffer, valid, &mut record) } == CUPTI_SUCCESS {
            let kind: u32 = read(record, 0);
            let name = match kind {
                KIND_CONCURRENT_KERNEL => {
                    let name: *const c_char = read(record, 104);
                    if name.is_null() {
                        "(unnamed kernel)".to_string()
                    } else {
                        // SAFETY: CUPTI's NUL-terminated kernel name, live while the buffer is.
                        unsafe { CStr::from_ptr(name) }.to_string_lossy().into_owned()
                    }
                }
                KIND_MEMSET => "[memset]".to_string(),
                KIND_MEMCPY => match read::<u8>(record, 4) {
                    1 => "[memcpy host to device]".to_string(),
                    2 => "[memcpy device to host]".to_string(),
                    8 => "[memcpy device to device]".to_string(),
                    other => format!("[memcpy kind {other}]"),
                },
                _ => continue,
            };
            let (start, end): (u64, u64) = (read(record, 16), read(record, 24));
            let entry = seen.by_name.entry(name).or_default();
            entry.0 += 1;
            entry.1 += end.saturating_sub(start);
            seen.first_start = if seen.first_start == 0 { start } else { seen.first_start.min(start) };
            seen.last_end = seen.last_end.max(end);
        }
    }
    // SAFETY: allocated by `buffer_requested` with this layout.
    unsafe { std::alloc::dealloc(buffer, buffer_layout()) };
}

/// One name's share of the traced device time.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct KernelTime {
    pub(crate) name: String,
    pub(crate) launches: u64,
    pub(crate) device_ms: f64,
}

/// What a trace saw: every name, the most device time first.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Profile {
    /// Sum of every kernel's, memset's and memcpy's device time.
    pub(crate) busy_ms: f64,
    /// From the first start to the last end on the device.
    pub(crate) span_ms: f64,
    pub(crate) launches: u64,
    pub(crate) kernels: Vec<KernelTime>,
}

/// A trace in progress (one at a time).
pub(crate) struct Trace {
    api: &'static Cupti,
}

const KINDS: [u32; 3] = [KIND_CONCURRENT_KERNEL, KIND_MEMSET, KIND_MEMCPY];

impl Trace {
    pub(crate) fn start() -> Result<Self, String> {
        let api = cupti()?;
        *SEEN.lock().map_err(|_| "poisoned")? = Some(Seen::default());
        static REGISTERED: OnceLock<i32> = OnceLock::new();
        // SAFETY: the callbacks have the signatures CUPTI calls them with.
        let status = *REGISTERED.get_or_init(|| unsafe { (api.register)(buffer_requested, buffer_completed) });
        if status != CUPTI_SUCCESS {
            return Err(format!("cuptiActivityRegisterCallbacks: error {status}"));
        }
        for kind in KINDS {
            // SAFETY: a kind cupti_activity.h defines.
            let status = unsafe { (api.enable)(kind) };
            if status != CUPTI_SUCCESS {
                return Err(format!("cuptiActivityEnable({kind}): error {status}"));
            }
        }
        Ok(Trace { api })
    }

    /// Stops recording (call after the device is synchronised) and sums what was seen.
    pub(crate) fn finish(self) -> Result<Profile, String> {
        // SAFETY: plain calls into CUPTI; the flush runs `buffer_completed` on this thread.
        unsafe {
            for kind in KINDS {
                (self.api.disable)(kind);
            }
            let status = (self.api.flush_all)(FLUSH_FORCED);
            if status != CUPTI_SUCCESS {
                return Err(format!("cuptiActivityFlushAll: error {status}"));
            }
        }
        let seen = SEEN.lock().map_err(|_| "poisoned")?.take().unwrap_or_default();
        let mut kernels: Vec<KernelTime> = seen
            .by_name
            .into_iter()
            .map(|(name, (launches, ns))| KernelTime { name, launches, device_ms: ns as f64 / 1e6 })
            .collect();
        kernels.sort_by(|a, b| b.device_ms.total_cmp(&a.device_ms));
        Ok(Profile {
            busy_ms: kernels.iter().map(|k| k.device_ms).sum(),
            span_ms: seen.last_end.saturating_sub(seen.first_start) as f64 / 1e6,
            launches: kernels.iter().map(|k| k.launches).sum(),
            kernels,
        })
    }
}
