//! Convolutions through cuDNN on CUDA devices (feature `cuda`): forward, input gradient and
//! weight gradient, as PyTorch computes them, where the generic path builds them from candle's
//! im2col and matrix products.
//!
//! cuDNN is loaded when first needed (`dlopen("libcudnn.so.9")`), never linked: a binary built
//! here starts on a machine without it and takes the generic path there ([`cudnn_status`] says
//! why). `DMLP_CUDNN=0` or [`set_cudnn`] turns it off; inside [`crate::with_generic_ops`] it is
//! off too, so a check can compare both paths on one GPU. A convolution cuDNN finds no algorithm
//! for also takes the generic path.
//!
//! Float32 computes with FMA math (no TF32, as PyTorch with `allow_tf32 = False`); bf16 and f16
//! on tensor cores with float32 accumulation. The algorithm of each pass and shape is chosen
//! once and cached: by default the first deterministic one of cuDNN's heuristics
//! (`cudnnGet*Algorithm_v7`, as PyTorch without `benchmark`) that needs at most 1 GiB of
//! workspace, so a run repeats itself on one GPU. `DMLP_CUDNN_SEARCH=benchmark` has cuDNN time
//! every algorithm on the first call of a shape instead (`cudnnFindConvolution*Algorithm`, as
//! PyTorch with `cudnn.benchmark = True`), and `DMLP_CUDNN_DETERMINISTIC=0` lets a
//! non-deterministic algorithm win. On an H200 (session 16) the benchmark's choice made the
//! ResNet-50 bf16 training step slower (315 against 532 images/s, the same machine), so the
//! heuristics stay the default. An algorithm runs with the math type it was offered with (for
//! float32 only FMA's).
//!
//! Run on an H200 in session 16 (`cargo xtask gpu-check`): values and gradients within the CPU
//! tolerances (docs/performance.md).

use std::collections::HashMap;
use std::ffi::{CStr, c_int, c_void};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, DeviceRepr};
use candle_core::cuda_backend::{CudaDType, CudaDevice, CudaStorage, CudaStorageSlice as S, DeviceId};
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor, bail};

use crate::Conv2dConfig;

use crate::cudnn_library::{AlgoPerf, Api, Opaque, Status, api};

static ENABLED: OnceLock<AtomicBool> = OnceLock::new();

fn enabled_flag() -> &'static AtomicBool {
    ENABLED.get_or_init(|| AtomicBool::new(std::env::var("DMLP_CUDNN").map_or(true, |v| v != "0")))
}

/// Turns cuDNN on or off for every convolution from now on (on by default; `DMLP_CUDNN=0`
/// starts with it off).
pub fn set_cudnn(enabled: bool) {
    enabled_flag().store(enabled, Ordering::Relaxed);
}

/// `Ok(version)` when convolutions on CUDA go through cuDNN, or why they take the generic path.
pub fn cudnn_status() -> std::result::Result<usize, String> {
    if !enabled_flag().load(Ordering::Relaxed) {
        return Err("turned off (DMLP_CUDNN=0 or set_cudnn(false))".into());
    }
    api().map(|api| api.version).map_err(str::to_owned)
}

pub(crate) fn check(api: &Api, status: Status, what: &str) -> Result<()> {
    if status == 0 {
        return Ok(());
    }
    // SAFETY: cuDNN returns a static NUL-terminated string for every status.
    let text = unsafe { CStr::from_ptr((api.get_error_string)(status)) }.to_string_lossy();
    bail!("cuDNN {what}: {text} ({status})")
}

/// cuDNN handles not in use, per device. A handle must not be used by two threads at once, and
/// threads come and go (data parallelism and the sharded evaluation start one per device per
/// step), so a convolution borrows one for its call and gives it back: a handle per thread would
/// make a new one every step and never free it.
static IDLE_HANDLES: LazyLock<Mutex<HashMap<DeviceId, Vec<usize>>>> = LazyLock::new(Default::default);

/// The algorithm chosen per operation, shape and device (`None`: cuDNN offers none), for every
/// thread.
static PLANS: LazyLock<Mutex<HashMap<PlanKey, Option<Plan>>>> = LazyLock::new(Default::default);

/// The descriptors of each pass, shape and device, made at its first call and kept for the
/// process (a model's convolutions make a few hundred, each a few small host objects): making,
/// setting and destroying them around every call cost about fifteen host calls a convolution
/// (2532 per ResNet-50 training step, 11016 per SK-Res2Net-101 step, counted by the CUDA dry
/// run). Their math type is set once, to the pass's plan's.
static KEPT_DESCRIPTORS: LazyLock<Mutex<HashMap<PlanKey, Arc<KeptDescriptors>>>> = LazyLock::new(Default::default);

/// How an algorithm is chosen (see the module docs), from `DMLP_CUDNN_SEARCH` and
/// `DMLP_CUDNN_DETERMINISTIC`, read once.
#[derive(Debug, Clone, Copy)]
struct Search {
    benchmark: bool,
    deterministic: bool,
}

fn search() -> Search {
    static SEARCH: OnceLock<Search> = OnceLock::new();
    *SEARCH.get_or_init(|| Search {
        benchmark: std::env::var("DMLP_CUDNN_SEARCH").is_ok_and(|v| v == "benchmark"),
        deterministic: std::env::var("DMLP_CUDNN_DETERMINISTIC").map_or(true, |v| v != "0"),
    })
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The maps stay whole whatever panicked while one was held: a plain insert or pop.
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A cuDNN handle lent to one call, on the device's stream; back to the pool on drop.
pub(crate) struct Handle {
    device: DeviceId,
    pub(crate) raw: Opaque,
}

impl Drop for Handle {
    fn drop(&mut self) {
        lock(&IDLE_HANDLES).entry(self.device).or_default().push(self.raw as usize);
    }
}

pub(crate) fn handle(api: &Api, device: &CudaDevice) -> Result<Handle> {
    let stream = device.cuda_stream();
    stream.context().bind_to_thread().map_err(|e| candle_core::Error::Msg(format!("CUDA: {e:?}")))?;
    let key = device.id();
    let idle = lock(&IDLE_HANDLES).get_mut(&key).and_then(Vec::pop);
    let raw = match idle {
        Some(raw) => raw as Opaque,
        None => {
            let mut raw = std::ptr::null_mut();
            // SAFETY: writes one handle; the device's context is current on this thread.
            check(api, unsafe { (api.create)(&mut raw) }, "create")?;
            raw
        }
    };
    let handle = Handle { device: key, raw };
    // SAFETY: the stream belongs to the device whose context the handle was made in.
    check(api, unsafe { (api.set_stream)(handle.raw, stream.cu_stream().cast()) }, "set stream")?;
    Ok(handle)
}

/// Which of the three convolution computations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Pass {
    /// `y = conv(x, w)`.
    Forward,
    /// `dx` from `dy` and `w`.
    InputGradient,
    /// `dw` from `x` and `dy`.
    WeightGradient,
}

/// A convolution's shapes: input `[B, C, H, W]`, weight `[O, C/g, k, k]`, output `[B, O, H', W']`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Geometry {
    input: [usize; 4],
    weight: [usize; 4],
    config: (usize, usize, usize, usize),
}

impl Geometry {
    fn new(input: [usize; 4], weight: [usize; 4], c: Conv2dConfig) -> Self {
        Self { input, weight, config: (c.stride, c.padding, c.dilation, c.groups) }
    }

    fn output(&self) -> [usize; 4] {
        let (stride, padding, dilation, _) = self.config;
        let side = |len: usize, k: usize| (len + 2 * padding - dilation * (k - 1) - 1) / stride + 1;
        [self.input[0], self.weight[0], side(self.input[2], self.weight[2]), side(self.input[3], self.weight[3])]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct PlanKey {
    pass: Pass,
    dtype: DType,
    geometry: Geometry,
    device: DeviceId,
}

/// An algorithm of one pass, the math it was offered with, and the workspace it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Plan {
    algo: c_int,
    math: c_int,
    workspace: usize,
}

/// `cudnnMathType_t`'s FMA_MATH: float32 without TF32.
const FMA_MATH: c_int = 3;

/// cuDNN's data type, and the math it computes in, for `dtype`.
fn data_type(dtype: DType) -> Result<(c_int, c_int, c_int)> {
    // (data, compute, math): FLOAT 0, DOUBLE 1, HALF 2, BFLOAT16 9; DEFAULT 0, TENSOR_OP 1, FMA 3.
    Ok(match dtype {
        DType::F32 => (0, 0, FMA_MATH),
        DType::F64 => (1, 1, 0),
        DType::F16 => (2, 0, 1),
        DType::BF16 => (9, 0, 1),
        other => bail!("cuDNN convolutions take f32, f64, f16 or bf16, not {other:?}"),
    })
}

/// Whether an algorithm offered with `math` may run on `dtype`: float32 only with FMA math (an
/// algorithm offered with tensor-op or default math could compute in TF32, which PyTorch with
/// `allow_tf32 = False`, the f32 reference, never does); the other types with any.
fn math_allowed(dtype: DType, math: c_int) -> bool {
    dtype != DType::F32 || math == FMA_MATH
}

/// The descriptors of one convolution, destroyed on drop.
struct Descriptors<'a> {
    api: &'a Api,
    x: Opaque,
    w: Opaque,
    y: Opaque,
    conv: Opaque,
}

impl Drop for Descriptors<'_> {
    fn drop(&mut self) {
        // SAFETY: each was created by this value (null ones are skipped) and is used no more.
        unsafe {
            for tensor in [self.x, self.y] {
                if !tensor.is_null() {
                    (self.api.destroy_tensor)(tensor);
                }
            }
            if !self.w.is_null() {
                (self.api.destroy_filter)(self.w);
            }
            if !self.conv.is_null() {
                (self.api.destroy_conv)(self.conv);
            }
        }
    }
}

pub(crate) fn int(value: usize) -> Result<c_int> {
    c_int::try_from(value).map_err(|_| candle_core::Error::Msg(format!("cuDNN: {value} does not fit an int")))
}

impl<'a> Descriptors<'a> {
    fn new(api: &'a Api, dtype: DType, g: &Geometry) -> Result<Self> {
        let (data, compute, math) = data_type(dtype)?;
        let mut d = Descriptors {
            api,
            x: std::ptr::null_mut(),
            w: std::ptr::null_mut(),
            y: std::ptr::null_mut(),
            conv: std::ptr::null_mut(),
        };
        let [b, c, h, w] = g.input;
        let [o, per_group, kh, kw] = g.weight;
        let [_, _, oh, ow] = g.output();
        let (stride, padding, dilation, groups) = g.config;
        // SAFETY: each descriptor is created before it is set; NCHW is format 0, cross-correlation
        // (what PyTorch computes) is mode 1.
        unsafe {
            check(api, (api.create_tensor)(&mut d.x), "tensor descriptor")?;
            check(api, (api.set_tensor_4d)(d.x, 0, data, int(b)?, int(c)?, int(h)?, int(w)?), "input shape")?;
            check(api, (api.create_tensor)(&mut d.y), "tensor descriptor")?;
            check(api, (api.set_tensor_4d)(d.y, 0, data, int(b)?, int(o)?, int(oh)?, int(ow)?), "output shape")?;
            check(api, (api.create_filter)(&mut d.w), "filter descriptor")?;
            check(
                api,
                (api.set_filter_4d)(d.w, data, 0, int(o)?, int(per_group)?, int(kh)?, int(kw)?),
                "weight shape",
            )?;
            check(api, (api.create_conv)(&mut d.conv), "convolution descriptor")?;
            let (p, s, dl) = (int(padding)?, int(stride)?, int(dilation)?);
            check(api, (api.set_conv_2d)(d.conv, p, p, s, s, dl, dl, 1, compute), "convolution")?;
            check(api, (api.set_group_count)(d.conv, int(groups)?), "groups")?;
            check(api, (api.set_math_type)(d.conv, math), "math type")?;
        }
        Ok(d)
    }

    /// The (first, second, output) descriptors of `pass`, in cuDNN's argument order.
    fn order(&self, pass: Pass) -> (Opaque, Opaque, Opaque) {
        match pass {
            Pass::Forward => (self.x, self.w, self.y),
            Pass::InputGradient => (self.w, self.y, self.x),
            Pass::WeightGradient => (self.x, self.y, self.w),
        }
    }
}

/// [`Descriptors`] kept for every call of one pass, shape and device (see [`KEPT_DESCRIPTORS`]).
struct KeptDescriptors(Descriptors<'static>);

// SAFETY: descriptors are host objects that cuDNN only reads during a call; a kept one is never
// written after it is made (its math type is set then), so calls on several threads may share it.
unsafe impl Send for KeptDescriptors {}
// SAFETY: as above.
unsafe impl Sync for KeptDescriptors {}

/// The kept descriptors of `key`, made (with `math`, its plan's) on its first call.
fn kept_descriptors(api: &'static Api, key: PlanKey, math: c_int) -> Result<Arc<KeptDescriptors>> {
    if let Some(kept) = lock(&KEPT_DESCRIPTORS).get(&key) {
        return Ok(kept.clone());
    }
    let descriptors = Descriptors::new(api, key.dtype, &key.geometry)?;
    // SAFETY: the descriptor is live and not yet shared.
    check(api, unsafe { (api.set_math_type)(descriptors.conv, math) }, "math type")?;
    let made = Arc::new(KeptDescriptors(descriptors));
    Ok(lock(&KEPT_DESCRIPTORS).entry(key).or_insert(made).clone())
}

/// The most workspace an algorithm may ask for.
const WORKSPACE_LIMIT: usize = 1 << 30;

/// The algorithm for `pass` (cached); `None` when cuDNN offers none: the first deterministic
/// one (see [`Search`]) of cuDNN's benchmark, fastest first, or of its heuristics, that fits the
/// workspace limit, run with the math type it was offered with (the descriptor's is set to it).
fn plan(api: &Api, device: &CudaDevice, handle: Opaque, key: PlanKey, d: &Descriptors<'_>) -> Result<Option<Plan>> {
    if let Some(plan) = lock(&PLANS).get(&key).copied() {
        return Ok(plan);
    }
    let (a, b, out) = d.order(key.pass);
    let mut found = [AlgoPerf::default(); 16];
    let mut count: c_int = 0;
    let index = match key.pass {
        Pass::Forward => 0,
        Pass::InputGradient => 1,
        Pass::WeightGradient => 2,
    };
    let search = search();
    let find = match api.benchmark {
        Some(benchmark) if search.benchmark => {
            // cuDNN allocates its trial buffers itself, outside the pool that keeps freed memory.
            crate::memory::release_cached_cuda_memory(device)?;
            benchmark[index]
        }
        _ => [api.find_forward, api.find_backward_data, api.find_backward_filter][index],
    };
    // SAFETY: writes at most `found.len()` results and their count.
    check(
        api,
        unsafe { find(handle, a, b, d.conv, out, found.len() as c_int, &mut count, found.as_mut_ptr()) },
        "algorithms",
    )?;
    let usable: Vec<&AlgoPerf> = found[..count.clamp(0, found.len() as c_int) as usize]
        .iter()
        .filter(|p| p.status == 0 && p.memory <= WORKSPACE_LIMIT && math_allowed(key.dtype, p.math_type))
        .collect();
    let deterministic = usable.iter().find(|p| p.determinism == 1);
    let chosen = if search.deterministic { deterministic.or_else(|| usable.first()) } else { usable.first() };
    let plan = match chosen {
        Some(&&AlgoPerf { algo, math_type: math, .. }) => {
            // SAFETY: the descriptor is live; the workspace depends on the math type.
            check(api, unsafe { (api.set_math_type)(d.conv, math) }, "math type")?;
            let workspace = match key.pass {
                Pass::Forward => api.workspace_forward,
                Pass::InputGradient => api.workspace_backward_data,
                Pass::WeightGradient => api.workspace_backward_filter,
            };
            let mut bytes = 0usize;
            // SAFETY: writes one size.
            check(api, unsafe { workspace(handle, a, b, d.conv, out, algo, &mut bytes) }, "workspace size")?;
            Some(Plan { algo, math, workspace: bytes })
        }
        None => None,
    };
    lock(&PLANS).insert(key, plan);
    Ok(plan)
}

/// Whether cuDNN computes every pass of this convolution (planning them, without running any).
fn supported(xs: &Tensor, weight: &Tensor, config: Conv2dConfig, passes: &[Pass]) -> Result<bool> {
    let Ok(api) = api() else { return Ok(false) };
    let candle_core::Device::Cuda(device) = xs.device() else { return Ok(false) };
    let geometry = Geometry::new(dims(xs)?, dims(weight)?, config);
    if data_type(xs.dtype()).is_err() {
        return Ok(false);
    }
    let keys: Vec<PlanKey> =
        passes.iter().map(|&pass| PlanKey { pass, dtype: xs.dtype(), geometry, device: device.id() }).collect();
    // Every step after the first finds its plans cached: no handle, no descriptors.
    let cached: Option<Vec<Option<Plan>>> = {
        let plans = lock(&PLANS);
        keys.iter().map(|key| plans.get(key).copied()).collect()
    };
    if let Some(plans) = cached {
        return Ok(plans.iter().all(Option::is_some));
    }
    let handle = handle(api, device)?;
    let descriptors = Descriptors::new(api, xs.dtype(), &geometry)?;
    for key in keys {
        if plan(api, device, handle.raw, key, &descriptors)?.is_none() {
            return Ok(false);
        }
    }
    Ok(true)
}

fn dims(t: &Tensor) -> Result<[usize; 4]> {
    let (a, b, c, d) = t.dims4()?;
    Ok([a, b, c, d])
}

/// Whether an op over `xs` may go through cuDNN at all: a CUDA tensor, cuDNN on, the generic
/// path not forced (whether the library loads is each op's own question).
pub(crate) fn on_for(xs: &Tensor) -> bool {
    xs.device().is_cuda() && enabled_flag().load(Ordering::Relaxed) && !crate::cpu::generic_forced()
}

/// Whether [`conv2d`] should take this convolution: [`on_for`] the input, cuDNN loaded, and an
/// algorithm for every pass it needs.
pub(crate) fn takes(xs: &Tensor, weight: &Tensor, config: Conv2dConfig) -> bool {
    if !on_for(xs) {
        return false;
    }
    let passes: &[Pass] = if xs.track_op() || weight.track_op() {
        &[Pass::Forward, Pass::InputGradient, Pass::WeightGradient]
    } else {
        &[Pass::Forward]
    };
    supported(xs, weight, config, passes).unwrap_or(false)
}

/// The convolution through cuDNN, with its backward through cuDNN (see [`takes`]).
///
/// # Shapes
/// `xs: [B, C, H, W]`, `weight: [O, C/groups, kh, kw]` → `[B, O, H', W']`.
pub(crate) fn conv2d(xs: &Tensor, weight: &Tensor, config: Conv2dConfig) -> Result<Tensor> {
    let geometry = Geometry::new(dims(xs)?, dims(weight)?, config);
    xs.contiguous()?.apply_op2(&weight.contiguous()?, CudnnConv { pass: Pass::Forward, geometry })
}

/// One pass of a convolution as a candle op on (first, second) in cuDNN's argument order:
/// forward on `(x, w)`, input gradient on `(w, dy)`, weight gradient on `(x, dy)`.
#[derive(Debug, Clone, Copy)]
struct CudnnConv {
    pass: Pass,
    geometry: Geometry,
}

impl CustomOp2 for CudnnConv {
    fn name(&self) -> &'static str {
        match self.pass {
            Pass::Forward => "cudnn-conv2d",
            Pass::InputGradient => "cudnn-conv2d-input-gradient",
            Pass::WeightGradient => "cudnn-conv2d-weight-gradient",
        }
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        bail!("cuDNN convolutions run on CUDA tensors only")
    }

    fn cuda_fwd(&self, a: &CudaStorage, al: &Layout, b: &CudaStorage, bl: &Layout) -> Result<(CudaStorage, Shape)> {
        if !al.is_contiguous() || !bl.is_contiguous() {
            bail!("{} needs contiguous tensors", self.name());
        }
        let out = match self.pass {
            Pass::Forward => self.geometry.output(),
            Pass::InputGradient => self.geometry.input,
            Pass::WeightGradient => self.geometry.weight,
        };
        let device = a.device().clone();
        let (ao, bo) = (al.start_offset(), bl.start_offset());
        let storage = match (&a.slice, &b.slice) {
            (S::F32(x), S::F32(y)) => self.launch(&device, (x, ao), (y, bo), out, DType::F32)?,
            (S::F64(x), S::F64(y)) => self.launch(&device, (x, ao), (y, bo), out, DType::F64)?,
            (S::F16(x), S::F16(y)) => self.launch(&device, (x, ao), (y, bo), out, DType::F16)?,
            (S::BF16(x), S::BF16(y)) => self.launch(&device, (x, ao), (y, bo), out, DType::BF16)?,
            _ => bail!("{}: {:?} and {:?}", self.name(), a.dtype(), b.dtype()),
        };
        Ok((storage, Shape::from(out.to_vec())))
    }

    fn bwd(&self, a: &Tensor, b: &Tensor, _: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        if self.pass != Pass::Forward {
            bail!("{} has no backward", self.name());
        }
        let (x, w, dy) = (a, b, grad.to_dtype(a.dtype())?.contiguous()?);
        let geometry = self.geometry;
        // The images entering the first convolution want no gradient: none is computed.
        let dx = x
            .track_op()
            .then(|| w.apply_op2_no_bwd(&dy, &CudnnConv { pass: Pass::InputGradient, geometry }))
            .transpose()?;
        let dw = w
            .track_op()
            .then(|| x.apply_op2_no_bwd(&dy, &CudnnConv { pass: Pass::WeightGradient, geometry }))
            .transpose()?;
        Ok((dx, dw))
    }
}

impl CudnnConv {
    fn launch<T: CudaDType + DeviceRepr>(
        &self,
        device: &CudaDevice,
        (first, first_offset): (&CudaSlice<T>, usize),
        (second, second_offset): (&CudaSlice<T>, usize),
        out: [usize; 4],
        dtype: DType,
    ) -> Result<CudaStorage> {
        let api = api().map_err(|e| candle_core::Error::Msg(e.to_owned()))?;
        let handle = handle(api, device)?;
        let key = PlanKey { pass: self.pass, dtype, geometry: self.geometry, device: device.id() };
        let planned = match lock(&PLANS).get(&key).copied() {
            Some(planned) => planned,
            None => plan(api, device, handle.raw, key, &Descriptors::new(api, dtype, &self.geometry)?)?,
        };
        let Some(Plan { algo, math, workspace: workspace_bytes }) = planned else {
            bail!("cuDNN has no algorithm for {} of {:?}", self.name(), self.geometry)
        };
        // Set to the plan's math type when made: the algorithm runs with the math it was offered with.
        let kept = kept_descriptors(api, key, math)?;
        let descriptors = &kept.0;
        let stream = device.cuda_stream();
        // SAFETY: every element of `result` is written by the convolution (β = 0); the workspace
        // is cuDNN's scratch (a block of its size kept from an earlier call, `alloc_cache.rs`).
        let mut result = unsafe { device.alloc::<T>(out.iter().product()) }?;
        let mut workspace = unsafe { device.alloc::<u8>(workspace_bytes.max(1)) }?;
        let size = std::mem::size_of::<T>() as u64;
        let (first_ptr, _first_sync) = first.device_ptr(&stream);
        let (second_ptr, _second_sync) = second.device_ptr(&stream);
        let (result_ptr, _result_sync) = result.device_ptr_mut(&stream);
        let (workspace_ptr, _workspace_sync) = workspace.device_ptr_mut(&stream);
        let (one64, zero64, one32, zero32) = (1f64, 0f64, 1f32, 0f32);
        let (alpha, beta): (*const c_void, *const c_void) = if dtype == DType::F64 {
            ((&raw const one64).cast(), (&raw const zero64).cast())
        } else {
            ((&raw const one32).cast(), (&raw const zero32).cast())
        };
        let (a, b, o) = descriptors.order(self.pass);
        let run = match self.pass {
            Pass::Forward => api.forward,
            Pass::InputGradient => api.backward_data,
            Pass::WeightGradient => api.backward_filter,
        };
        // SAFETY: the pointers are the contiguous tensors' (offset by their layouts' starts) and
        // the buffers allocated above, all on `stream`, which the handle runs on.
        let status = unsafe {
            run(
                handle.raw,
                alpha,
                a,
                (first_ptr + first_offset as u64 * size) as *const c_void,
                b,
                (second_ptr + second_offset as u64 * size) as *const c_void,
                descriptors.conv,
                algo,
                workspace_ptr as *mut c_void,
                workspace_bytes,
                beta,
                o,
                result_ptr as *mut c_void,
            )
        };
        check(api, status, self.name())?;
        drop((_first_sync, _second_sync, _result_sync, _workspace_sync));
        Ok(CudaStorage::wrap_cuda_slice(result, device.clone()))
    }
}
