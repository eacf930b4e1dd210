//! BatchNorm's training pass through cuDNN on CUDA devices (feature `cuda`): the statistics, the
//! normalisation and its backward each one cuDNN call (`cudnnBatchNormalizationForwardTraining`,
//! `cudnnBatchNormalizationBackward`, spatial mode, as PyTorch calls them), where the generic
//! path composes them from about a dozen candle ops forward and twice that backward, each a
//! pass over the activation and each output kept for the backward.
//!
//! γ, β and the statistics are f32. Half-precision data (bf16, f16: a layer under autocast) goes
//! to cuDNN as it is, in its mixed configuration (the parameter descriptor cuDNN derives from a
//! half-precision one is f32), so the conversions to f32 and back around each layer (four
//! launches per layer and, by session 17's profile, 11 of a ResNet-50 bf16 step's 43 ms on an
//! H200) are gone. Where cuDNN refuses that (an error from any of the calls) the data is
//! converted to f32 and back instead, from then on in this process; [`half_precision_status`]
//! says which happened (`gpu-check` reports it). Not yet run on a GPU.
//!
//! The running statistics, when they are f32 and contiguous on the input's device (always, for
//! a model built in f32), are updated by the same cuDNN call, in place, as PyTorch's cuDNN path
//! has them updated (`running = (1 − m)·running + m·batch`, the variance unbiased): no launch of
//! its own, where composing the update took fourteen small ones per layer (six `affine`, two
//! adds, a square, a reciprocal, a ReLU and three copies: by session 17's profile a fifth to a
//! third of a step's launches, which bound the bf16 step's speed on an H200). Otherwise cuDNN
//! returns the batch mean and the inverse standard deviation `1/√(var + ε)`, the biased variance
//! is recovered from it, and [`crate::BatchNorm`] updates its statistics as on every other path.
//!
//! Taken when cuDNN is loaded and on, the generic path is not forced, the input is f32, f16 or
//! bf16, and ε is at least cuDNN's minimum (1e-5); otherwise the generic path runs.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, LazyLock, Mutex};

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr};
use candle_core::cuda_backend::{CudaDType, CudaDevice, CudaStorage};
use candle_core::{CpuStorage, CustomOp1, CustomOp3, DType, Layout, Result, Shape, Tensor, bail};

use crate::cuda_kernels::{address, cuda, f32_address};
use crate::cudnn::{check, handle, int, on_for};
use crate::cudnn_library::{Api, BatchNormApi, Opaque, api};

/// `CUDNN_BATCHNORM_SPATIAL`: one mean and variance per channel over batch and space.
const SPATIAL: i32 = 1;

/// cuDNN's smallest ε (`CUDNN_BN_MIN_EPSILON`).
const MIN_EPSILON: f64 = 1e-5;

/// Whether the training pass of a BatchNorm over `xs` goes through cuDNN (see the module docs).
pub(crate) fn takes(xs: &Tensor, eps: f64) -> bool {
    on_for(xs)
        && matches!(xs.dtype(), DType::F32 | DType::F16 | DType::BF16)
        && eps >= MIN_EPSILON
        && xs.rank() >= 2
        && api().is_ok_and(|api| api.batch_norm.is_some())
}

/// Per-channel batch statistics cuDNN saved in the forward for its backward: the mean at 0 and
/// the inverse standard deviation at [`stats_offset`] of one buffer, shared with the backward
/// (no copy).
type Saved = Arc<Mutex<Option<Arc<CudaSlice<f32>>>>>;

/// Where a second per-channel vector starts in a buffer of two (aligned for cuDNN's loads).
fn stats_offset(channels: usize) -> usize {
    channels.div_ceil(64) * 64
}

/// `[N, C, ...]` as the `[N, C, rest, 1]` cuDNN normalises over per channel.
fn nchw(dims: &[usize]) -> Result<[usize; 4]> {
    if dims.len() < 2 {
        bail!("batch norm needs [N, C, ...], got {dims:?}")
    }
    Ok([dims[0], dims[1], dims[2..].iter().product(), 1])
}

/// A BatchNorm's running statistics (tensors sharing its storage) and momentum, for cuDNN's
/// forward to update in place.
#[derive(Clone)]
pub(crate) struct Running {
    pub(crate) mean: Tensor,
    pub(crate) var: Tensor,
    pub(crate) momentum: f64,
}

impl Running {
    /// Whether cuDNN can update these statistics of `channels` channels for an input on `device`
    /// in place: f32, contiguous, `[C]` each, on that device.
    fn updatable_for(&self, channels: usize, device: &candle_core::Device) -> bool {
        [&self.mean, &self.var].iter().all(|t| {
            t.dtype() == DType::F32 && t.is_contiguous() && t.elem_count() == channels && t.device().same_device(device)
        })
    }
}

/// The training pass: `ys` in the input's dtype, and either `None` (cuDNN updated `running` in
/// place: see the module docs) or the detached batch statistics `(mean, biased var)`, `[C]`
/// each, f32, for the caller's update. Half-precision input goes to cuDNN as it is (γ, β and the
/// statistics in f32, cuDNN's mixed configuration) unless cuDNN has refused that once in this
/// process ([`half_precision_status`]); then it is converted to f32 and back.
///
/// # Shapes
/// `xs: [N, C, ...]`, `weight`, `bias: [C]` → `[N, C, ...]`.
pub(crate) fn train(
    xs: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    running: Running,
) -> Result<(Tensor, Option<(Tensor, Tensor)>)> {
    let dtype = xs.dtype();
    let (weight, bias) = (weight.to_dtype(DType::F32)?.contiguous()?, bias.to_dtype(DType::F32)?.contiguous()?);
    if dtype != DType::F32 && half_precision_allowed() {
        match train_as(&xs.contiguous()?, &weight, &bias, eps, &running) {
            Ok(trained) => {
                half_precision_worked();
                return Ok(trained);
            }
            Err(error) => half_precision_refused(&error),
        }
    }
    let (ys, stats) = train_as(&crate::to_dtype(xs, DType::F32)?.contiguous()?, &weight, &bias, eps, &running)?;
    Ok((crate::to_dtype(&ys, dtype)?, stats))
}

/// [`train`] on a contiguous `x` in the dtype cuDNN gets (f32, bf16 or f16): `ys` in that dtype.
fn train_as(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    running: &Running,
) -> Result<(Tensor, Option<(Tensor, Tensor)>)> {
    let channels = x.dim(1)?;
    let saved: Saved = Arc::new(Mutex::new(None));
    let updated = running.updatable_for(channels, x.device()).then(|| running.clone());
    let in_place = updated.is_some();
    let ys = x.apply_op3(weight, bias, BatchNormForward { eps, saved: saved.clone(), running: updated })?;
    if in_place {
        return Ok((ys, None));
    }
    let stats = x.apply_op1_no_bwd(&TakeSaved(saved))?;
    let mean = stats.narrow(0, 0, channels)?;
    let inv_std = stats.narrow(0, stats_offset(channels), channels)?;
    let var = (inv_std.sqr()?.recip()? - eps)?.relu()?;
    Ok((ys, Some((mean, var))))
}

/// What became of half-precision BatchNorm in cuDNN in this process: not tried, taken, or
/// refused (with cuDNN's error, the input then converted to f32).
static HALF_PRECISION: Mutex<HalfPrecision> = Mutex::new(HalfPrecision::NotTried);

#[derive(Debug, Clone)]
enum HalfPrecision {
    NotTried,
    Taken,
    Refused(String),
}

fn half_precision_allowed() -> bool {
    !matches!(*HALF_PRECISION.lock().unwrap_or_else(|p| p.into_inner()), HalfPrecision::Refused(_))
}

fn half_precision_worked() {
    let mut state = HALF_PRECISION.lock().unwrap_or_else(|p| p.into_inner());
    if matches!(*state, HalfPrecision::NotTried) {
        *state = HalfPrecision::Taken;
    }
}

fn half_precision_refused(error: &candle_core::Error) {
    *HALF_PRECISION.lock().unwrap_or_else(|p| p.into_inner()) = HalfPrecision::Refused(error.to_string());
}

/// How half-precision (bf16, f16) BatchNorm ran on cuDNN in this process: `"not tried"`, `"in
/// cuDNN"` (bf16/f16 data, f32 parameters and statistics), or `"converted to f32: …"` with the
/// error cuDNN gave the first time.
pub fn half_precision_status() -> String {
    match &*HALF_PRECISION.lock().unwrap_or_else(|p| p.into_inner()) {
        HalfPrecision::NotTried => "not tried".into(),
        HalfPrecision::Taken => "in cuDNN".into(),
        HalfPrecision::Refused(why) => format!("converted to f32: {why}"),
    }
}

/// The x/y descriptor and the per-channel parameter descriptor derived from it, destroyed on drop.
struct Descriptors<'a> {
    api: &'a Api,
    x: Opaque,
    parameters: Opaque,
}

impl Drop for Descriptors<'_> {
    fn drop(&mut self) {
        // SAFETY: each was created by this value (null ones are skipped) and is used no more.
        unsafe {
            for descriptor in [self.x, self.parameters] {
                if !descriptor.is_null() {
                    (self.api.destroy_tensor)(descriptor);
                }
            }
        }
    }
}

impl<'a> Descriptors<'a> {
    fn new(api: &'a Api, bn: &BatchNormApi, [n, c, h, w]: [usize; 4], data_type: i32) -> Result<Self> {
        let mut d = Descriptors { api, x: std::ptr::null_mut(), parameters: std::ptr::null_mut() };
        // SAFETY: each descriptor is created before it is set; NCHW is format 0.
        unsafe {
            check(api, (api.create_tensor)(&mut d.x), "tensor descriptor")?;
            let x = (api.set_tensor_4d)(d.x, 0, data_type, int(n)?, int(c)?, int(h)?, int(w)?);
            check(api, x, "batch norm input")?;
            check(api, (api.create_tensor)(&mut d.parameters), "tensor descriptor")?;
            check(api, (bn.derive)(d.parameters, d.x, SPATIAL), "batch norm parameters")?;
        }
        Ok(d)
    }
}

/// [`Descriptors`] kept for every call on one shape and data type (made at the first): four host
/// calls fewer per BatchNorm call (as the convolutions keep theirs, `cudnn.rs`). Never written
/// after they are made, so calls on several threads share them.
struct KeptDescriptors(Descriptors<'static>);

// SAFETY: host objects cuDNN only reads during a call, never written after they are made.
unsafe impl Send for KeptDescriptors {}
// SAFETY: as above.
unsafe impl Sync for KeptDescriptors {}

/// A BatchNorm call's shape `[N, C, H, W]` and cuDNN data type.
type ShapeKey = ([usize; 4], i32);

static KEPT_DESCRIPTORS: LazyLock<Mutex<HashMap<ShapeKey, Arc<KeptDescriptors>>>> = LazyLock::new(Default::default);

fn kept_descriptors(
    api: &'static Api,
    bn: &BatchNormApi,
    shape: [usize; 4],
    data_type: i32,
) -> Result<Arc<KeptDescriptors>> {
    let lock = || KEPT_DESCRIPTORS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(kept) = lock().get(&(shape, data_type)) {
        return Ok(kept.clone());
    }
    let made = Arc::new(KeptDescriptors(Descriptors::new(api, bn, shape, data_type)?));
    Ok(lock().entry((shape, data_type)).or_insert(made).clone())
}

fn cuda_err(e: impl std::fmt::Debug) -> candle_core::Error {
    candle_core::Error::Msg(format!("CUDA: {e:?}"))
}

/// What one cuDNN BatchNorm call over `x` needs: the entry points, the device, a handle on its
/// stream and the descriptors of `x`'s shape.
struct Call {
    bn: &'static BatchNormApi,
    device: candle_core::cuda_backend::CudaDevice,
    channels: usize,
    handle: crate::cudnn::Handle,
    descriptors: Arc<KeptDescriptors>,
}

impl Call {
    fn new(x: &CudaStorage, layout: &Layout) -> Result<Self> {
        let api = api().map_err(|e| candle_core::Error::Msg(e.to_owned()))?;
        let bn = api.batch_norm.as_ref().ok_or_else(|| candle_core::Error::Msg("cuDNN has no BatchNorm".into()))?;
        let device = x.device().clone();
        let shape = nchw(layout.dims())?;
        let handle = handle(api, &device)?;
        let descriptors = kept_descriptors(api, bn, shape, data_type(x.dtype())?)?;
        Ok(Call { bn, device, channels: shape[1], handle, descriptors })
    }
}

/// cuDNN's type of a BatchNorm's data (x, y, dy, dx): FLOAT 0, HALF 2, BFLOAT16 9; γ, β and the
/// statistics are f32 for all three (the parameter descriptor cuDNN derives).
fn data_type(dtype: DType) -> Result<i32> {
    Ok(match dtype {
        DType::F32 => 0,
        DType::F16 => 2,
        DType::BF16 => 9,
        other => bail!("cuDNN batch norm takes f32, f16 or bf16 data, not {other:?}"),
    })
}

/// A new uninitialised buffer of `len` elements of `dtype` (f32, f16, bf16) on `device`, with
/// its address.
fn alloc_data(device: &CudaDevice, dtype: DType, len: usize, stream: &Arc<CudaStream>) -> Result<(CudaStorage, u64)> {
    fn alloc<T: CudaDType + DeviceRepr>(
        device: &CudaDevice,
        len: usize,
        stream: &Arc<CudaStream>,
    ) -> Result<(CudaStorage, u64)> {
        // SAFETY: every caller has cuDNN write all `len` elements before anything reads them.
        let slice = unsafe { device.alloc::<T>(len.max(1)) }?;
        let ptr = slice.device_ptr(stream).0;
        Ok((CudaStorage::wrap_cuda_slice(slice, device.clone()), ptr))
    }
    match dtype {
        DType::F32 => alloc::<f32>(device, len, stream),
        DType::F16 => alloc::<half::f16>(device, len, stream),
        DType::BF16 => alloc::<half::bf16>(device, len, stream),
        other => bail!("cuDNN batch norm takes f32, f16 or bf16 data, not {other:?}"),
    }
}

/// `(x, γ, β) → y`, saving the batch statistics for the backward and for [`TakeSaved`].
struct BatchNormForward {
    eps: f64,
    saved: Saved,
    /// Updated by the same call when present.
    running: Option<Running>,
}

impl CustomOp3 for BatchNormForward {
    fn name(&self) -> &'static str {
        "cudnn-batch-norm-train"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        bail!("cuDNN batch norm runs on CUDA tensors only")
    }

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        xl: &Layout,
        weight: &CudaStorage,
        wl: &Layout,
        bias: &CudaStorage,
        bl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let Call { bn, device, channels, handle, descriptors } = Call::new(x, xl)?;
        if wl.shape().elem_count() != channels || bl.shape().elem_count() != channels {
            bail!("batch norm: γ {:?} and β {:?} for {channels} channels", wl.dims(), bl.dims())
        }
        let stream = device.cuda_stream();
        let x_ptr = address(x, xl, &stream, "input")?;
        let (w_ptr, b_ptr) = (f32_address(weight, wl, &stream, "γ")?, f32_address(bias, bl, &stream, "β")?);
        // Every element of both buffers is written by cuDNN before anything reads it.
        let (ys, y_ptr) = alloc_data(&device, x.dtype(), xl.shape().elem_count(), &stream)?;
        // SAFETY: as above.
        let mut stats = unsafe { device.alloc::<f32>(stats_offset(channels) + channels) }?;
        let (one, zero) = (1f32, 0f32);
        // The running statistics' storages stay read-locked (against a `Var::set` from another
        // thread) until cuDNN has been handed their addresses.
        let running =
            self.running.as_ref().map(|r| (r.mean.storage_and_layout(), r.var.storage_and_layout(), r.momentum));
        {
            let (s_ptr, _s) = stats.device_ptr_mut(&stream);
            let inv_ptr = s_ptr + (stats_offset(channels) * std::mem::size_of::<f32>()) as u64;
            let (factor, mean_ptr, var_ptr) = match &running {
                Some(((mean, ml), (var, vl), momentum)) => {
                    if ml.shape().elem_count() != channels || vl.shape().elem_count() != channels {
                        bail!(
                            "batch norm: running statistics {:?} and {:?} for {channels} channels",
                            ml.dims(),
                            vl.dims()
                        )
                    }
                    (
                        *momentum,
                        f32_address(cuda(mean, "running mean")?, ml, &stream, "running mean")?,
                        f32_address(cuda(var, "running var")?, vl, &stream, "running var")?,
                    )
                }
                None => (0.0, 0, 0),
            };
            let as_mut = |ptr: u64| if ptr == 0 { std::ptr::null_mut() } else { ptr as *mut c_void };
            // SAFETY: contiguous f32 buffers of the descriptors' shapes on the handle's stream.
            // The running statistics (or null: the caller keeps them) are device memory that
            // candle only reaches through this stream, so cuDNN's in-place update is ordered
            // after every earlier use of them and before every later one, as `Var::set`'s copy
            // would be; the Rust-side storage objects are only read.
            let status = unsafe {
                (bn.forward_training)(
                    handle.raw,
                    SPATIAL,
                    (&raw const one).cast(),
                    (&raw const zero).cast(),
                    descriptors.0.x,
                    x_ptr as *const c_void,
                    descriptors.0.x,
                    y_ptr as *mut c_void,
                    descriptors.0.parameters,
                    w_ptr as *const c_void,
                    b_ptr as *const c_void,
                    factor,
                    as_mut(mean_ptr),
                    as_mut(var_ptr),
                    self.eps,
                    s_ptr as *mut c_void,
                    inv_ptr as *mut c_void,
                )
            };
            check(descriptors.0.api, status, "batch norm forward")?;
        }
        *self.saved.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(stats));
        Ok((ys, xl.shape().clone()))
    }

    /// `(dx, dγ, dβ)`; `dx` in `x`'s dtype. A half-precision backward cuDNN refuses is run in
    /// f32 (the forward's statistics are f32 either way).
    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let saved = self.saved.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(saved) = saved else { bail!("cuDNN batch norm backward without its forward statistics") };
        let dy = crate::to_dtype(grad, x.dtype())?.contiguous()?;
        let (dx, parameters) = match backward(x, weight, &dy, self.eps, &saved) {
            Err(error) if x.dtype() != DType::F32 => {
                half_precision_refused(&error);
                let f32 = |t: &Tensor| -> Result<Tensor> { crate::to_dtype(t, DType::F32)?.contiguous() };
                let (dx, parameters) = backward(&f32(x)?, weight, &f32(&dy)?, self.eps, &saved)?;
                (crate::to_dtype(&dx, x.dtype())?, parameters)
            }
            result => result?,
        };
        let c = weight.elem_count();
        Ok((Some(dx), Some(parameters.narrow(0, 0, c)?), Some(parameters.narrow(0, stats_offset(c), c)?)))
    }
}

/// cuDNN's backward over `x` and `dy` (one dtype): `dx` in that dtype and the packed f32
/// `[dγ… | dβ…]` (dβ at [`stats_offset`]).
fn backward(
    x: &Tensor,
    weight: &Tensor,
    dy: &Tensor,
    eps: f64,
    saved: &Arc<CudaSlice<f32>>,
) -> Result<(Tensor, Tensor)> {
    let dx: Stash = Arc::new(Mutex::new(None));
    let op = BatchNormBackward { eps, saved: saved.clone(), dx: dx.clone() };
    let parameters = x.apply_op3_no_bwd(weight, dy, &op)?;
    let dx = x.apply_op1_no_bwd(&TakeStashed(dx))?;
    Ok((dx, parameters))
}

/// A buffer one op leaves for the next ([`TakeStashed`]) when an op has two outputs.
type Stash = Arc<Mutex<Option<CudaStorage>>>;

/// `(x, γ, dy) → [dγ… | dβ…]` (f32) from the saved statistics, `dx` left in `dx`.
struct BatchNormBackward {
    eps: f64,
    saved: Arc<CudaSlice<f32>>,
    dx: Stash,
}

impl CustomOp3 for BatchNormBackward {
    fn name(&self) -> &'static str {
        "cudnn-batch-norm-train-backward"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        bail!("cuDNN batch norm runs on CUDA tensors only")
    }

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        xl: &Layout,
        weight: &CudaStorage,
        wl: &Layout,
        dy: &CudaStorage,
        dl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        if dl.dims() != xl.dims() || dy.dtype() != x.dtype() {
            bail!(
                "batch norm backward: gradient {:?} {:?} does not match input {:?} {:?}",
                dl.dims(),
                dy.dtype(),
                xl.dims(),
                x.dtype()
            )
        }
        let Call { bn, device, channels, handle, descriptors } = Call::new(x, xl)?;
        let stream = device.cuda_stream();
        let (x_ptr, dy_ptr) = (address(x, xl, &stream, "input")?, address(dy, dl, &stream, "gradient")?);
        let w_ptr = f32_address(weight, wl, &stream, "γ")?;
        // cuDNN writes every element of dx, dγ and dβ; the padding between dγ and dβ is never read.
        let (dx, dx_ptr) = alloc_data(&device, x.dtype(), xl.shape().elem_count(), &stream)?;
        let b_at = stats_offset(channels);
        // SAFETY: as above.
        let mut parameters = unsafe { device.alloc::<f32>(b_at + channels) }?;
        let (one, zero) = (1f32, 0f32);
        let size = std::mem::size_of::<f32>() as u64;
        {
            let (s_ptr, _s) = self.saved.as_ref().device_ptr(&stream);
            let (p_ptr, _p) = parameters.device_ptr_mut(&stream);
            let inv_ptr = s_ptr + stats_offset(channels) as u64 * size;
            // SAFETY: contiguous buffers of the descriptors' shapes and types on the handle's
            // stream; the statistics are the forward's.
            let status = unsafe {
                (bn.backward)(
                    handle.raw,
                    SPATIAL,
                    (&raw const one).cast(),
                    (&raw const zero).cast(),
                    (&raw const one).cast(),
                    (&raw const zero).cast(),
                    descriptors.0.x,
                    x_ptr as *const c_void,
                    descriptors.0.x,
                    dy_ptr as *const c_void,
                    descriptors.0.x,
                    dx_ptr as *mut c_void,
                    descriptors.0.parameters,
                    w_ptr as *const c_void,
                    p_ptr as *mut c_void,
                    (p_ptr + b_at as u64 * size) as *mut c_void,
                    self.eps,
                    s_ptr as *const c_void,
                    inv_ptr as *const c_void,
                )
            };
            check(descriptors.0.api, status, "batch norm backward")?;
        }
        *self.dx.lock().unwrap_or_else(|p| p.into_inner()) = Some(dx);
        Ok((CudaStorage::wrap_cuda_slice(parameters, device), Shape::from(b_at + channels)))
    }
}

/// The buffer a [`BatchNormBackward`] left, as a tensor of the shape of the tensor it is applied
/// to (its `x`): moved out, not copied.
struct TakeStashed(Stash);

impl CustomOp1 for TakeStashed {
    fn name(&self) -> &'static str {
        "cudnn-batch-norm-input-gradient"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        bail!("cuDNN batch norm runs on CUDA tensors only")
    }

    fn cuda_fwd(&self, _: &CudaStorage, layout: &Layout) -> Result<(CudaStorage, Shape)> {
        let taken = self.0.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(dx) = taken else { bail!("cuDNN batch norm backward left no input gradient") };
        Ok((dx, layout.shape().clone()))
    }
}

/// The statistics the forward saved, copied out as a tensor (`[mean… | inverse std…]`, see
/// [`stats_offset`]); applied to the forward's input for its device.
struct TakeSaved(Saved);

impl CustomOp1 for TakeSaved {
    fn name(&self) -> &'static str {
        "cudnn-batch-norm-statistics"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        bail!("cuDNN batch norm runs on CUDA tensors only")
    }

    fn cuda_fwd(&self, x: &CudaStorage, _: &Layout) -> Result<(CudaStorage, Shape)> {
        let saved = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let Some(stats) = saved.as_ref() else { bail!("cuDNN batch norm left no statistics") };
        let copy = stats.try_clone().map_err(cuda_err)?;
        let len = copy.len();
        Ok((CudaStorage::wrap_cuda_slice(copy, x.device().clone()), Shape::from(len)))
    }
}
