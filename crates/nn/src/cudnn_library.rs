//! cuDNN's shared library, loaded at run time (`dlopen`), never linked, and the legacy
//! convolution entry points this crate calls (present in cuDNN 8 and 9); see `cudnn.rs`.
//!
//! cuDNN 9's `libcudnn.so.9` is a shim that loads its parts (`libcudnn_graph.so.9`,
//! `libcudnn_cnn.so.9`, …) on first use and **aborts the process** when one is missing, so
//! every part is loaded here first, from the shim's folder or the library path; a missing one
//! is an error naming it, and the convolutions take the generic path.

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::sync::OnceLock;

pub(crate) type Status = c_int;
pub(crate) type Opaque = *mut c_void;

/// The cuDNN entry points used here (the legacy convolution API, present in cuDNN 8 and 9).
#[allow(clippy::type_complexity)]
pub(crate) struct Api {
    pub(crate) version: usize,
    pub(crate) get_error_string: unsafe extern "C" fn(Status) -> *const c_char,
    pub(crate) create: unsafe extern "C" fn(*mut Opaque) -> Status,
    pub(crate) set_stream: unsafe extern "C" fn(Opaque, *mut c_void) -> Status,
    pub(crate) create_tensor: unsafe extern "C" fn(*mut Opaque) -> Status,
    pub(crate) set_tensor_4d: unsafe extern "C" fn(Opaque, c_int, c_int, c_int, c_int, c_int, c_int) -> Status,
    pub(crate) destroy_tensor: unsafe extern "C" fn(Opaque) -> Status,
    pub(crate) create_filter: unsafe extern "C" fn(*mut Opaque) -> Status,
    pub(crate) set_filter_4d: unsafe extern "C" fn(Opaque, c_int, c_int, c_int, c_int, c_int, c_int) -> Status,
    pub(crate) destroy_filter: unsafe extern "C" fn(Opaque) -> Status,
    pub(crate) create_conv: unsafe extern "C" fn(*mut Opaque) -> Status,
    pub(crate) set_conv_2d:
        unsafe extern "C" fn(Opaque, c_int, c_int, c_int, c_int, c_int, c_int, c_int, c_int) -> Status,
    pub(crate) set_group_count: unsafe extern "C" fn(Opaque, c_int) -> Status,
    pub(crate) set_math_type: unsafe extern "C" fn(Opaque, c_int) -> Status,
    pub(crate) destroy_conv: unsafe extern "C" fn(Opaque) -> Status,
    /// (handle, first descriptor, second, conv, output descriptor, requested, returned, results)
    pub(crate) find_forward:
        unsafe extern "C" fn(Opaque, Opaque, Opaque, Opaque, Opaque, c_int, *mut c_int, *mut AlgoPerf) -> Status,
    pub(crate) find_backward_data:
        unsafe extern "C" fn(Opaque, Opaque, Opaque, Opaque, Opaque, c_int, *mut c_int, *mut AlgoPerf) -> Status,
    pub(crate) find_backward_filter:
        unsafe extern "C" fn(Opaque, Opaque, Opaque, Opaque, Opaque, c_int, *mut c_int, *mut AlgoPerf) -> Status,
    /// (handle, first descriptor, second, conv, output descriptor, algo, bytes)
    pub(crate) workspace_forward:
        unsafe extern "C" fn(Opaque, Opaque, Opaque, Opaque, Opaque, c_int, *mut usize) -> Status,
    pub(crate) workspace_backward_data:
        unsafe extern "C" fn(Opaque, Opaque, Opaque, Opaque, Opaque, c_int, *mut usize) -> Status,
    pub(crate) workspace_backward_filter:
        unsafe extern "C" fn(Opaque, Opaque, Opaque, Opaque, Opaque, c_int, *mut usize) -> Status,
    /// (handle, α, first desc, first, second desc, second, conv, algo, workspace, bytes, β, out desc, out)
    pub(crate) forward: Launch,
    pub(crate) backward_data: Launch,
    pub(crate) backward_filter: Launch,
    /// cuDNN's benchmarks (`cudnnFindConvolution*Algorithm`: every algorithm run and timed, the
    /// fastest first; arguments as the heuristics'), `None` where the library lacks them.
    pub(crate) benchmark: Option<[Find; 3]>,
    /// BatchNorm's training pass (legacy, deprecated in cuDNN 9 but present): `None` where the
    /// library lacks it, and BatchNorm takes the generic path.
    pub(crate) batch_norm: Option<BatchNormApi>,
}

/// cuDNN's legacy BatchNorm entry points (`cudnn_ops`), as PyTorch calls them.
#[allow(clippy::type_complexity)]
pub(crate) struct BatchNormApi {
    /// (derived descriptor, x descriptor, mode)
    pub(crate) derive: unsafe extern "C" fn(Opaque, Opaque, c_int) -> Status,
    /// (handle, mode, α, β, x desc, x, y desc, y, parameter desc, γ, β, average factor,
    /// running mean, running variance, ε, saved mean, saved inverse standard deviation)
    pub(crate) forward_training: unsafe extern "C" fn(
        Opaque,
        c_int,
        *const c_void,
        *const c_void,
        Opaque,
        *const c_void,
        Opaque,
        *mut c_void,
        Opaque,
        *const c_void,
        *const c_void,
        f64,
        *mut c_void,
        *mut c_void,
        f64,
        *mut c_void,
        *mut c_void,
    ) -> Status,
    /// (handle, mode, α data, β data, α parameters, β parameters, x desc, x, dy desc, dy, dx desc,
    /// dx, parameter desc, γ, dγ, dβ, ε, saved mean, saved inverse standard deviation)
    pub(crate) backward: unsafe extern "C" fn(
        Opaque,
        c_int,
        *const c_void,
        *const c_void,
        *const c_void,
        *const c_void,
        Opaque,
        *const c_void,
        Opaque,
        *const c_void,
        Opaque,
        *mut c_void,
        Opaque,
        *const c_void,
        *mut c_void,
        *mut c_void,
        f64,
        *const c_void,
        *const c_void,
    ) -> Status,
}

/// (handle, first descriptor, second, conv, output descriptor, requested, returned, results)
pub(crate) type Find =
    unsafe extern "C" fn(Opaque, Opaque, Opaque, Opaque, Opaque, c_int, *mut c_int, *mut AlgoPerf) -> Status;

pub(crate) type Launch = unsafe extern "C" fn(
    Opaque,
    *const c_void,
    Opaque,
    *const c_void,
    Opaque,
    *const c_void,
    Opaque,
    c_int,
    *mut c_void,
    usize,
    *const c_void,
    Opaque,
    *mut c_void,
) -> Status;

/// `cudnnConvolution*AlgoPerf_t` (the three share one layout).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct AlgoPerf {
    pub(crate) algo: c_int,
    pub(crate) status: c_int,
    pub(crate) time: f32,
    pub(crate) memory: usize,
    pub(crate) determinism: c_int,
    pub(crate) math_type: c_int,
    pub(crate) reserved: [c_int; 3],
}

// SAFETY: the API is a table of C function pointers into a library that stays loaded.
unsafe impl Send for Api {}
// SAFETY: as above; cuDNN's functions take their state through the handle passed to them.
unsafe impl Sync for Api {}

const LIBRARIES: [&CStr; 2] = [c"libcudnn.so.9", c"libcudnn.so"];

/// The parts the shim loads for the convolution API and would abort without. (Its engine
/// libraries are loaded by `libcudnn_graph` itself, which reports a missing one as a status.)
const PARTS: [&str; 3] = ["libcudnn_graph.so.9", "libcudnn_ops.so.9", "libcudnn_cnn.so.9"];

/// The last `dlerror`, or "".
fn dl_error() -> String {
    // SAFETY: dlerror returns null or a NUL-terminated string owned by libc.
    unsafe {
        let reason = libc::dlerror();
        if reason.is_null() { String::new() } else { CStr::from_ptr(reason).to_string_lossy().into() }
    }
}

/// Loads every part the shim at `shim` (a path) will load, from its folder or the library path.
fn load_parts(shim: &std::path::Path) -> Result<(), String> {
    let folder = shim.parent().unwrap_or_else(|| std::path::Path::new("."));
    for part in PARTS {
        let beside = CString::new(folder.join(part).to_string_lossy().as_bytes()).map_err(|e| e.to_string())?;
        let by_name = CString::new(part).map_err(|e| e.to_string())?;
        // SAFETY: dlopen with NUL-terminated names; the handles stay open for the process.
        let loaded = unsafe {
            !libc::dlopen(beside.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL).is_null()
                || !libc::dlopen(by_name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL).is_null()
        };
        if !loaded {
            return Err(format!("{part} (a part of {}) cannot be loaded: {}", shim.display(), dl_error()));
        }
    }
    Ok(())
}

/// The loaded library's path, from the address of one of its symbols.
fn path_of(symbol: *mut c_void) -> Option<std::path::PathBuf> {
    // SAFETY: dladdr fills `info` for an address inside a loaded object.
    unsafe {
        let mut info: libc::Dl_info = std::mem::zeroed();
        if libc::dladdr(symbol, &mut info) == 0 || info.dli_fname.is_null() {
            return None;
        }
        Some(std::path::PathBuf::from(CStr::from_ptr(info.dli_fname).to_string_lossy().into_owned()))
    }
}

// Each symbol is transmuted to the type of the field it fills, which the struct spells out.
#[allow(clippy::missing_transmute_annotations)]
fn load(candidates: &[&CStr]) -> Result<Api, String> {
    // SAFETY: dlopen/dlsym with NUL-terminated names; a symbol is cast to the type the cuDNN
    // headers declare for it, and no cuDNN function runs before every part is loaded.
    unsafe {
        let mut library = std::ptr::null_mut();
        for name in candidates {
            library = libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
            if !library.is_null() {
                break;
            }
        }
        if library.is_null() {
            let tried: Vec<String> = candidates.iter().map(|c| c.to_string_lossy().into_owned()).collect();
            return Err(format!("libcudnn.so.9 not found (tried {}; last: {})", tried.join(", "), dl_error()));
        }
        macro_rules! symbol {
            ($name:literal) => {{
                let pointer = libc::dlsym(library, concat!($name, "\0").as_ptr().cast());
                if pointer.is_null() {
                    return Err(format!("libcudnn has no {}", $name));
                }
                std::mem::transmute::<*mut c_void, _>(pointer)
            }};
        }
        let version_symbol = libc::dlsym(library, c"cudnnGetVersion".as_ptr());
        if version_symbol.is_null() {
            return Err("libcudnn has no cudnnGetVersion".into());
        }
        let shim = path_of(version_symbol).ok_or("libcudnn's path is unknown")?;
        load_parts(&shim)?;
        let get_version: unsafe extern "C" fn() -> usize = symbol!("cudnnGetVersion");
        let optional = |name: &CStr| {
            let pointer = libc::dlsym(library, name.as_ptr());
            (!pointer.is_null()).then_some(pointer)
        };
        let benchmark = match (
            optional(c"cudnnFindConvolutionForwardAlgorithm"),
            optional(c"cudnnFindConvolutionBackwardDataAlgorithm"),
            optional(c"cudnnFindConvolutionBackwardFilterAlgorithm"),
        ) {
            (Some(forward), Some(data), Some(filter)) => Some([
                std::mem::transmute::<*mut c_void, Find>(forward),
                std::mem::transmute::<*mut c_void, Find>(data),
                std::mem::transmute::<*mut c_void, Find>(filter),
            ]),
            _ => None,
        };
        let batch_norm = match (
            optional(c"cudnnDeriveBNTensorDescriptor"),
            optional(c"cudnnBatchNormalizationForwardTraining"),
            optional(c"cudnnBatchNormalizationBackward"),
        ) {
            (Some(derive), Some(forward_training), Some(backward)) => Some(BatchNormApi {
                derive: std::mem::transmute::<*mut c_void, _>(derive),
                forward_training: std::mem::transmute::<*mut c_void, _>(forward_training),
                backward: std::mem::transmute::<*mut c_void, _>(backward),
            }),
            _ => None,
        };
        Ok(Api {
            version: get_version(),
            get_error_string: symbol!("cudnnGetErrorString"),
            create: symbol!("cudnnCreate"),
            set_stream: symbol!("cudnnSetStream"),
            create_tensor: symbol!("cudnnCreateTensorDescriptor"),
            set_tensor_4d: symbol!("cudnnSetTensor4dDescriptor"),
            destroy_tensor: symbol!("cudnnDestroyTensorDescriptor"),
            create_filter: symbol!("cudnnCreateFilterDescriptor"),
            set_filter_4d: symbol!("cudnnSetFilter4dDescriptor"),
            destroy_filter: symbol!("cudnnDestroyFilterDescriptor"),
            create_conv: symbol!("cudnnCreateConvolutionDescriptor"),
            set_conv_2d: symbol!("cudnnSetConvolution2dDescriptor"),
            set_group_count: symbol!("cudnnSetConvolutionGroupCount"),
            set_math_type: symbol!("cudnnSetConvolutionMathType"),
            destroy_conv: symbol!("cudnnDestroyConvolutionDescriptor"),
            find_forward: symbol!("cudnnGetConvolutionForwardAlgorithm_v7"),
            find_backward_data: symbol!("cudnnGetConvolutionBackwardDataAlgorithm_v7"),
            find_backward_filter: symbol!("cudnnGetConvolutionBackwardFilterAlgorithm_v7"),
            workspace_forward: symbol!("cudnnGetConvolutionForwardWorkspaceSize"),
            workspace_backward_data: symbol!("cudnnGetConvolutionBackwardDataWorkspaceSize"),
            workspace_backward_filter: symbol!("cudnnGetConvolutionBackwardFilterWorkspaceSize"),
            forward: symbol!("cudnnConvolutionForward"),
            backward_data: symbol!("cudnnConvolutionBackwardData"),
            backward_filter: symbol!("cudnnConvolutionBackwardFilter"),
            benchmark,
            batch_norm,
        })
    }
}

/// The library, loaded on first use (or why it cannot be).
pub(crate) fn api() -> Result<&'static Api, &'static str> {
    static API: OnceLock<Result<Api, String>> = OnceLock::new();
    API.get_or_init(|| load(&LIBRARIES)).as_ref().map_err(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_library_is_an_error_naming_it() {
        let error = load(&[c"/nonexistent/libcudnn.so.9"]).err().unwrap();
        assert!(error.contains("libcudnn.so.9 not found") && error.contains("/nonexistent"), "{error}");
    }

    #[test]
    fn a_shim_without_its_parts_is_an_error_naming_the_part_not_an_abort() {
        // libc stands in for the shim: it has no parts beside it.
        let error = load_parts(std::path::Path::new("/nonexistent/libcudnn.so.9")).unwrap_err();
        assert!(error.contains("libcudnn_graph.so.9"), "{error}");
    }
}
