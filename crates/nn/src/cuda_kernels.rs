//! dmlp's own CUDA kernels (feature `cuda`): `src/cuda/kernels.cu`, compiled to PTX by
//! `build.rs` with the CUDA toolkit's nvcc and loaded into candle's device on first use. They are
//! the CUDA forward of the CPU custom ops of [`crate::activation_op`] and [`crate::pool`] (ReLU,
//! the residual `ReLU(a + b)`, ReLU's backward mask, max and average pooling and their
//! backward), so on CUDA each of those is one kernel instead of candle's primitives. Measured
//! on an H200 (session 17's kernel profile, docs/performance.md): the primitives spent
//! 12 ms of a 164 ms ResNet-50 step on `x > 0` against a broadcast scalar, and 18 ms in the stem's
//! max-pool (`argmax` + `index_add`).
//!
//! `DMLP_CUDA_KERNELS=0` turns them off (candle's primitives, the generic path, take over);
//! inside [`crate::with_generic_ops`] they are off too.

use std::sync::{Arc, OnceLock};

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaStream, CudaView, DevicePtr, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaDType, CudaDevice, CudaStorage, CudaStorageSlice as S};
use candle_core::{DType, Layout, Result, Tensor, bail};
use half::{bf16, f16};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/kernels.ptx"));
const MODULE: &str = "dmlp_kernels";

fn enabled() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var("DMLP_CUDA_KERNELS").map_or(true, |v| v != "0"))
}

/// Whether an op over `xs` runs dmlp's CUDA kernel: a CUDA tensor of a float type, the kernels
/// on, the generic path not forced.
pub(crate) fn takes(xs: &Tensor) -> bool {
    xs.device().is_cuda()
        && enabled()
        && !crate::cpu::generic_forced()
        && matches!(xs.dtype(), DType::F32 | DType::F64 | DType::BF16 | DType::F16)
}

/// A pooling's geometry as the kernels take it (`struct Pool` in kernels.cu).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pool {
    pub(crate) h: i32,
    pub(crate) w: i32,
    pub(crate) oh: i32,
    pub(crate) ow: i32,
    pub(crate) k: i32,
    pub(crate) s: i32,
    pub(crate) p: i32,
}

// SAFETY: plain `repr(C)` integers, laid out as kernels.cu's `Pool`.
unsafe impl DeviceRepr for Pool {}

impl Pool {
    pub(crate) fn new(
        (h, w): (usize, usize),
        (oh, ow): (usize, usize),
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        let int = |v: usize| i32::try_from(v).map_err(|_| candle_core::Error::Msg(format!("pooling: {v} too large")));
        Ok(Pool {
            h: int(h)?,
            w: int(w)?,
            oh: int(oh)?,
            ow: int(ow)?,
            k: int(kernel)?,
            s: int(stride)?,
            p: int(padding)?,
        })
    }
}

/// An element type the kernels are built for.
trait Element: CudaDType + DeviceRepr {
    const SUFFIX: &'static str;
}
impl Element for f32 {
    const SUFFIX: &'static str = "f32";
}
impl Element for f64 {
    const SUFFIX: &'static str = "f64";
}
impl Element for bf16 {
    const SUFFIX: &'static str = "bf16";
}
impl Element for f16 {
    const SUFFIX: &'static str = "f16";
}

/// A kernel argument: a scalar or a contiguous view of an input.
enum Arg<'a, T> {
    Size(usize),
    Pool(Pool),
    Int(i32),
    Input(CudaView<'a, T>),
}

/// The element offset of a contiguous layout.
fn start(layout: &Layout, what: &str) -> Result<usize> {
    match layout.contiguous_offsets() {
        Some((start, _)) => Ok(start),
        None => bail!("{what}: dmlp's CUDA kernels take contiguous tensors"),
    }
}

/// A contiguous tensor's elements as a kernel reads them.
fn view<'a, T: Element>(storage: &'a CudaStorage, layout: &Layout, what: &str) -> Result<CudaView<'a, T>> {
    Ok(storage.as_cuda_slice::<T>()?.slice(start(layout, what)?..))
}

fn input<'a, T: Element>(storage: &'a CudaStorage, layout: &Layout, what: &str) -> Result<Arg<'a, T>> {
    Ok(Arg::Input(view(storage, layout, what)?))
}

/// Launches `dmlp_{name}_{T}` over `threads` elements with `args` and a new output of `out_len`
/// elements as the last argument.
fn launch<T: Element>(
    device: &CudaDevice,
    name: &str,
    threads: usize,
    args: &[Arg<'_, T>],
    out_len: usize,
) -> Result<CudaStorage> {
    let func = device.get_or_load_custom_func(&format!("dmlp_{name}_{}", T::SUFFIX), MODULE, PTX)?;
    // SAFETY: every kernel writes each of its `out_len` outputs (one thread per output, or per
    // input of a backward whose output has the input's length).
    let out: CudaSlice<T> = unsafe { device.alloc::<T>(out_len.max(1)) }?;
    let threads_u32 = u32::try_from(threads.max(1))
        .map_err(|_| candle_core::Error::Msg(format!("{name}: {threads} elements exceed one launch")))?;
    let mut builder = func.builder();
    for arg in args {
        match arg {
            Arg::Size(v) => builder.arg(v),
            Arg::Pool(g) => builder.arg(g),
            Arg::Int(v) => builder.arg(v),
            Arg::Input(view) => builder.arg(view),
        };
    }
    builder.arg(&out);
    // SAFETY: the argument list matches the kernel's signature in kernels.cu; the inputs are
    // live views of `threads`-sized (or, for pooling, geometry-sized) contiguous buffers.
    unsafe { builder.launch(LaunchConfig::for_num_elems(threads_u32)) }
        .map_err(|e| candle_core::Error::Msg(format!("{name}: kernel launch failed: {e:?}")))?;
    Ok(CudaStorage::wrap_cuda_slice(out, device.clone()))
}

/// Runs `f` with the element type of `storage`.
macro_rules! by_dtype {
    ($storage:expr, $what:expr, |$t:ident| $body:expr) => {
        match &$storage.slice {
            S::F32(_) => {
                type $t = f32;
                $body
            }
            S::F64(_) => {
                type $t = f64;
                $body
            }
            S::BF16(_) => {
                type $t = bf16;
                $body
            }
            S::F16(_) => {
                type $t = f16;
                $body
            }
            _ => bail!("{}: dmlp's CUDA kernels take f32, f64, bf16 or f16, not {:?}", $what, $storage.dtype()),
        }
    };
}

fn same_dims(a: &Layout, b: &Layout, what: &str) -> Result<()> {
    if a.dims() != b.dims() {
        bail!("{what}: shapes {:?} and {:?} differ", a.dims(), b.dims())
    }
    Ok(())
}

/// `max(x, 0)` elementwise.
pub(crate) fn relu(x: &CudaStorage, l: &Layout) -> Result<CudaStorage> {
    let n = l.shape().elem_count();
    by_dtype!(x, "relu", |T| launch::<T>(&x.device, "relu", n, &[Arg::Size(n), input::<T>(x, l, "relu")?], n))
}

/// `max(a + b, 0)` elementwise.
pub(crate) fn add_relu(a: &CudaStorage, al: &Layout, b: &CudaStorage, bl: &Layout) -> Result<CudaStorage> {
    same_dims(al, bl, "add_relu")?;
    let n = al.shape().elem_count();
    by_dtype!(a, "add_relu", |T| launch::<T>(
        &a.device,
        "add_relu",
        n,
        &[Arg::Size(n), input::<T>(a, al, "add_relu")?, input::<T>(b, bl, "add_relu")?],
        n
    ))
}

/// `dy · [y > 0]` elementwise.
pub(crate) fn relu_mask(y: &CudaStorage, yl: &Layout, dy: &CudaStorage, dl: &Layout) -> Result<CudaStorage> {
    same_dims(yl, dl, "relu backward")?;
    let n = yl.shape().elem_count();
    by_dtype!(y, "relu backward", |T| launch::<T>(
        &y.device,
        "relu_mask",
        n,
        &[Arg::Size(n), input::<T>(y, yl, "relu backward")?, input::<T>(dy, dl, "relu backward")?],
        n
    ))
}

/// Max pooling's forward: `[planes, h, w]` → `[planes, oh, ow]`.
pub(crate) fn max_pool_forward(x: &CudaStorage, l: &Layout, planes: usize, g: Pool) -> Result<CudaStorage> {
    let n = planes * (g.oh * g.ow) as usize;
    by_dtype!(x, "max pool", |T| launch::<T>(
        &x.device,
        "max_pool_forward",
        n,
        &[Arg::Size(n), Arg::Pool(g), input::<T>(x, l, "max pool")?],
        n
    ))
}

/// Max pooling's backward: the input `x` and the output gradient `dy` → the input gradient.
pub(crate) fn max_pool_backward(
    x: &CudaStorage,
    xl: &Layout,
    dy: &CudaStorage,
    dl: &Layout,
    planes: usize,
    g: Pool,
) -> Result<CudaStorage> {
    let n = planes * (g.h * g.w) as usize;
    by_dtype!(x, "max pool backward", |T| launch::<T>(
        &x.device,
        "max_pool_backward",
        n,
        &[
            Arg::Size(n),
            Arg::Pool(g),
            input::<T>(x, xl, "max pool backward")?,
            input::<T>(dy, dl, "max pool backward")?
        ],
        n
    ))
}

/// Average pooling's forward: `[planes, h, w]` → `[planes, oh, ow]`.
pub(crate) fn avg_pool_forward(
    x: &CudaStorage,
    l: &Layout,
    planes: usize,
    g: Pool,
    count_include_pad: bool,
) -> Result<CudaStorage> {
    let n = planes * (g.oh * g.ow) as usize;
    by_dtype!(x, "avg pool", |T| launch::<T>(
        &x.device,
        "avg_pool_forward",
        n,
        &[Arg::Size(n), Arg::Pool(g), Arg::Int(count_include_pad as i32), input::<T>(x, l, "avg pool")?],
        n
    ))
}

/// Average pooling's backward: the output gradient `dy` → the input gradient.
pub(crate) fn avg_pool_backward(
    dy: &CudaStorage,
    dl: &Layout,
    planes: usize,
    g: Pool,
    count_include_pad: bool,
) -> Result<CudaStorage> {
    let n = planes * (g.h * g.w) as usize;
    by_dtype!(dy, "avg pool backward", |T| launch::<T>(
        &dy.device,
        "avg_pool_backward",
        n,
        &[Arg::Size(n), Arg::Pool(g), Arg::Int(count_include_pad as i32), input::<T>(dy, dl, "avg pool backward")?],
        n
    ))
}

/// `a + s·(b − a)` with `s` one value per row of `hw` elements (`crate::blend_op`).
pub(crate) fn blend(
    a: &CudaStorage,
    al: &Layout,
    b: &CudaStorage,
    bl: &Layout,
    s: &CudaStorage,
    sl: &Layout,
    hw: usize,
) -> Result<CudaStorage> {
    same_dims(al, bl, "blend")?;
    let n = al.shape().elem_count();
    by_dtype!(a, "blend", |T| launch::<T>(
        &a.device,
        "blend",
        n,
        &[
            Arg::Size(n),
            Arg::Size(hw.max(1)),
            input::<T>(a, al, "blend")?,
            input::<T>(b, bl, "blend")?,
            input::<T>(s, sl, "blend")?
        ],
        n
    ))
}

/// The blend's input gradients `[g − g·s | g·s]`, `2n` values.
pub(crate) fn blend_input_grads(
    g: &CudaStorage,
    gl: &Layout,
    s: &CudaStorage,
    sl: &Layout,
    hw: usize,
) -> Result<CudaStorage> {
    let n = gl.shape().elem_count();
    by_dtype!(g, "blend backward", |T| launch::<T>(
        &g.device,
        "blend_input_grads",
        n,
        &[
            Arg::Size(n),
            Arg::Size(hw.max(1)),
            input::<T>(g, gl, "blend backward")?,
            input::<T>(s, sl, "blend backward")?
        ],
        2 * n
    ))
}

/// Threads per block of the kernels that reduce one row per block (`ROW_THREADS` in kernels.cu).
const ROW_THREADS: u32 = 256;

/// Launches `$name` as `$blocks` blocks of [`ROW_THREADS`] threads (one per row) with the
/// arguments pushed in order (the kernel's signature in kernels.cu).
macro_rules! launch_rows {
    ($device:expr, $name:expr, $blocks:expr, $($arg:expr),+) => {{
        let func = $device.get_or_load_custom_func($name, MODULE, PTX)?;
        let blocks = u32::try_from($blocks)
            .map_err(|_| candle_core::Error::Msg(format!("{}: {} rows", $name, $blocks)))?;
        let mut builder = func.builder();
        $(builder.arg($arg);)+
        let config = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (ROW_THREADS, 1, 1), shared_mem_bytes: 0 };
        if blocks > 0 {
            // SAFETY: the arguments match the kernel's signature; every view holds the rows the
            // kernel reads (the caller checked the shapes).
            unsafe { builder.launch(config) }
                .map_err(|e| candle_core::Error::Msg(format!("{}: kernel launch failed: {e:?}", $name)))?;
        }
    }};
}

/// A new uninitialised buffer of `len` (at least one) elements that a kernel fills.
fn output<T: Element>(device: &CudaDevice, len: usize) -> Result<CudaSlice<T>> {
    // SAFETY: every caller launches a kernel writing all `len` elements before any read.
    unsafe { device.alloc::<T>(len.max(1)) }
}

/// The blend's weight gradient `Σ_hw g·(b − a)` per row: one block per row.
#[allow(clippy::too_many_arguments)]
pub(crate) fn blend_weight_grads(
    a: &CudaStorage,
    al: &Layout,
    b: &CudaStorage,
    bl: &Layout,
    g: &CudaStorage,
    gl: &Layout,
    rows: usize,
    hw: usize,
) -> Result<CudaStorage> {
    same_dims(al, bl, "blend backward")?;
    same_dims(al, gl, "blend backward")?;
    let what = "blend backward";
    by_dtype!(a, what, |T| {
        let (va, vb, vg) = (view::<T>(a, al, what)?, view::<T>(b, bl, what)?, view::<T>(g, gl, what)?);
        let ds = output::<T>(&a.device, rows)?;
        let name = format!("dmlp_blend_weight_grads_{}", T::SUFFIX);
        launch_rows!(a.device, &name, rows, &hw, &va, &vb, &vg, &ds);
        Ok(CudaStorage::wrap_cuda_slice(ds, a.device.clone()))
    })
}

/// SK's gate input `[σ·m₁ + (1 − σ)·m₂ | m₁ − m₂]` per row (`crate::pool_mix_op`): one block per row.
#[allow(clippy::too_many_arguments)]
pub(crate) fn pool_mix(
    a: &CudaStorage,
    al: &Layout,
    b: &CudaStorage,
    bl: &Layout,
    alpha: &CudaStorage,
    alpha_l: &Layout,
    rows: usize,
    hw: usize,
) -> Result<CudaStorage> {
    same_dims(al, bl, "pool mix")?;
    let what = "pool mix";
    by_dtype!(a, what, |T| {
        let (va, vb, valpha) = (view::<T>(a, al, what)?, view::<T>(b, bl, what)?, view::<T>(alpha, alpha_l, what)?);
        let packed = output::<T>(&a.device, 2 * rows)?;
        let name = format!("dmlp_pool_mix_{}", T::SUFFIX);
        launch_rows!(a.device, &name, rows, &rows, &hw, &va, &vb, &valpha, &packed);
        Ok(CudaStorage::wrap_cuda_slice(packed, a.device.clone()))
    })
}

/// The gate input's input gradients `[dgv·σ/hw | dgv·(1 − σ)/hw]`, `2n` values.
pub(crate) fn pool_mix_input_grads(
    dgv: &CudaStorage,
    gl: &Layout,
    alpha: &CudaStorage,
    alpha_l: &Layout,
    n: usize,
    hw: usize,
) -> Result<CudaStorage> {
    let what = "pool mix backward";
    by_dtype!(dgv, what, |T| launch::<T>(
        &dgv.device,
        "pool_mix_input_grads",
        n,
        &[Arg::Size(n), Arg::Size(hw.max(1)), input::<T>(dgv, gl, what)?, input::<T>(alpha, alpha_l, what)?],
        2 * n
    ))
}

/// The gate input's α gradient `Σ dgv·(m₁ − m₂)·σ(1 − σ)`: one block.
pub(crate) fn pool_mix_alpha_grad(
    dgv: &CudaStorage,
    gl: &Layout,
    diff: &CudaStorage,
    dl: &Layout,
    alpha: &CudaStorage,
    alpha_l: &Layout,
) -> Result<CudaStorage> {
    same_dims(gl, dl, "pool mix backward")?;
    let rows = gl.shape().elem_count();
    let what = "pool mix backward";
    by_dtype!(dgv, what, |T| {
        let (vg, vd, valpha) =
            (view::<T>(dgv, gl, what)?, view::<T>(diff, dl, what)?, view::<T>(alpha, alpha_l, what)?);
        let dalpha = output::<T>(&dgv.device, 1)?;
        let name = format!("dmlp_pool_mix_alpha_grad_{}", T::SUFFIX);
        launch_rows!(dgv.device, &name, 1usize, &rows, &vg, &vd, &valpha, &dalpha);
        Ok(CudaStorage::wrap_cuda_slice(dalpha, dgv.device.clone()))
    })
}

/// SGD's hyper-parameters for one update (PyTorch's `torch.optim.SGD`, dampening 0).
#[derive(Debug, Clone, Copy)]
pub(crate) struct SgdUpdate {
    pub(crate) lr: f32,
    pub(crate) momentum: f32,
    pub(crate) weight_decay: f32,
    pub(crate) nesterov: bool,
    /// The buffer's first step: it becomes the gradient (with weight decay).
    pub(crate) first: bool,
}

impl SgdUpdate {
    /// A step after the first, from `torch.optim.SGD`'s f64 hyper-parameters (the kernels take f32).
    pub(crate) fn new((lr, momentum, weight_decay): (f64, f64, f64), nesterov: bool) -> Self {
        SgdUpdate {
            lr: lr as f32,
            momentum: momentum as f32,
            weight_decay: weight_decay as f32,
            nesterov,
            first: false,
        }
    }
}

/// Which tensor an [`SgdOp`] updates in place.
#[derive(Debug, Clone, Copy)]
pub(crate) enum SgdPart {
    /// The momentum buffer, from the parameter and the gradient:
    /// `buf ← first ? g' : momentum·buf + g'` with `g' = g + wd·p`.
    Buffer,
    /// The parameter, from the gradient and the updated buffer:
    /// `p ← p − lr·(nesterov ? g' + momentum·buf : buf)`.
    Param,
}

/// One of SGD's two in-place kernels (`dmlp_sgd_buffer_f32`, then `dmlp_sgd_param_f32`).
pub(crate) struct SgdOp(pub(crate) SgdPart, pub(crate) SgdUpdate);

/// Launches `name` over `n` elements with the arguments pushed in order (the kernel's
/// signature in kernels.cu); every kernel computes element `i` in thread `i` of a grid-stride loop.
macro_rules! launch_kernel {
    ($device:expr, $name:expr, $n:expr, $($arg:expr),+) => {{
        let func = $device.get_or_load_custom_func($name, MODULE, PTX)?;
        let threads = u32::try_from($n.max(1))
            .map_err(|_| candle_core::Error::Msg(format!("{}: {} elements", $name, $n)))?;
        let mut builder = func.builder();
        $(builder.arg($arg);)+
        // SAFETY: the arguments match the kernel's signature; every view holds `n` contiguous
        // elements (the caller checked the shapes).
        unsafe { builder.launch(LaunchConfig::for_num_elems(threads)) }
            .map_err(|e| candle_core::Error::Msg(format!("{}: kernel launch failed: {e:?}", $name)))?;
    }};
}

impl candle_core::InplaceOp3 for SgdOp {
    fn name(&self) -> &'static str {
        match self.0 {
            SgdPart::Buffer => "dmlp-sgd-buffer",
            SgdPart::Param => "dmlp-sgd-param",
        }
    }

    fn cpu_fwd(
        &self,
        _: &mut candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> Result<()> {
        bail!("{} runs on CUDA only (the CPU composes the update from tensor ops)", self.name())
    }

    /// `dst` is the buffer (with `a` the parameter, `b` the gradient) or the parameter (with `a`
    /// the gradient, `b` the buffer), all of one shape, f32, contiguous.
    fn cuda_fwd(
        &self,
        dst: &mut CudaStorage,
        dl: &Layout,
        a: &CudaStorage,
        al: &Layout,
        b: &CudaStorage,
        bl: &Layout,
    ) -> Result<()> {
        if dl.dims() != al.dims() || dl.dims() != bl.dims() {
            bail!("{}: shapes {:?}, {:?} and {:?} differ", self.name(), dl.dims(), al.dims(), bl.dims())
        }
        let n = dl.shape().elem_count();
        let SgdUpdate { lr, momentum, weight_decay, nesterov, first } = self.1;
        let (a, b) = (view::<f32>(a, al, "sgd")?, view::<f32>(b, bl, "sgd")?);
        let device = dst.device.clone();
        let offset = start(dl, "sgd")?;
        let mut out = dst.as_cuda_slice_mut::<f32>()?.slice_mut(offset..);
        match self.0 {
            SgdPart::Buffer => {
                let first = first as i32;
                launch_kernel!(device, "dmlp_sgd_buffer_f32", n, &n, &momentum, &weight_decay, &first, &a, &b, &mut out)
            }
            SgdPart::Param => {
                let nesterov = nesterov as i32;
                launch_kernel!(
                    device,
                    "dmlp_sgd_param_f32",
                    n,
                    &n,
                    &lr,
                    &momentum,
                    &weight_decay,
                    &nesterov,
                    &a,
                    &b,
                    &mut out
                )
            }
        }
        Ok(())
    }
}

/// One SGD step in place (see [`crate::sgd_step_in_place`]).
pub(crate) fn sgd_step(
    param: &Tensor,
    grad: &Tensor,
    buffer: Option<&Tensor>,
    update: SgdUpdate,
) -> Result<Option<Tensor>> {
    let all_f32 = [Some(param), Some(grad), buffer].into_iter().flatten().all(|t| t.dtype() == DType::F32);
    let all_contiguous = [Some(param), Some(grad), buffer].into_iter().flatten().all(Tensor::is_contiguous);
    if !takes(param) || !all_f32 || !all_contiguous || update.momentum == 0.0 {
        return Ok(None);
    }
    let (buffer, first) = match buffer {
        Some(buffer) => (buffer.clone(), false),
        None => (param.zeros_like()?, true),
    };
    buffer.inplace_op3(param, grad, &SgdOp(SgdPart::Buffer, SgdUpdate { first, ..update }))?;
    param.inplace_op3(grad, &buffer, &SgdOp(SgdPart::Param, update))?;
    Ok(Some(buffer))
}

/// Elements one block of `dmlp_sgd_many_f32` updates.
const SGD_CHUNK: usize = 16 * 1024;
/// Threads per block of `dmlp_sgd_many_f32`.
const SGD_THREADS: u32 = 256;

/// The CUDA storage inside a locked tensor's storage.
pub(crate) fn cuda<'s>(storage: &'s candle_core::Storage, what: &str) -> Result<&'s CudaStorage> {
    match storage {
        candle_core::Storage::Cuda(storage) => Ok(storage),
        _ => bail!("{what}: not on a CUDA device"),
    }
}

/// The device address of the first element of a contiguous f32, f16 or bf16 CUDA buffer (for a
/// library call that takes raw pointers: cuDNN, or a kernel's address table).
pub(crate) fn address(storage: &CudaStorage, layout: &Layout, stream: &Arc<CudaStream>, what: &str) -> Result<u64> {
    let (ptr, size) = match storage.dtype() {
        DType::F32 => (storage.as_cuda_slice::<f32>()?.device_ptr(stream).0, 4),
        DType::F16 => (storage.as_cuda_slice::<f16>()?.device_ptr(stream).0, 2),
        DType::BF16 => (storage.as_cuda_slice::<bf16>()?.device_ptr(stream).0, 2),
        other => bail!("{what}: f32, f16 or bf16 expected, not {other:?}"),
    };
    Ok(ptr + (start(layout, what)? * size) as u64)
}

/// [`address`] of a buffer that must be f32.
pub(crate) fn f32_address(storage: &CudaStorage, layout: &Layout, stream: &Arc<CudaStream>, what: &str) -> Result<u64> {
    if storage.dtype() != DType::F32 {
        bail!("{what}: f32 expected, not {:?}", storage.dtype())
    }
    address(storage, layout, stream, what)
}

/// One SGD step (after the first: every buffer exists) over many `(param, grad, buffer)` in
/// place, by one kernel launch over a table of their addresses (one upload), where
/// [`sgd_step`] launches two kernels per parameter: on an H200 the launches, not the device,
/// bound a bf16 step. The same arithmetic as [`sgd_step`]. Returns `false`, having done
/// nothing, unless every tensor is a contiguous f32 tensor on one CUDA device, the kernels are
/// on and there is momentum.
pub(crate) fn sgd_step_many(items: &[(&Tensor, &Tensor, &Tensor)], update: SgdUpdate) -> Result<bool> {
    let Some((first, _, _)) = items.first() else { return Ok(true) };
    let candle_core::Device::Cuda(device) = first.device() else { return Ok(false) };
    let usable = |t: &Tensor| t.dtype() == DType::F32 && t.is_contiguous() && t.device().same_device(first.device());
    let all_usable = items.iter().all(|(p, g, b)| {
        takes(p) && [p, g, b].into_iter().all(|t| usable(t)) && p.dims() == g.dims() && p.dims() == b.dims()
    });
    if !all_usable || update.momentum == 0.0 || update.first {
        return Ok(false);
    }
    let stream = device.cuda_stream();
    // Every storage stays read-locked until the launch is queued (see `launch` below for why
    // writing through these addresses is sound).
    let locked: Vec<_> = items.iter().flat_map(|(p, g, b)| [p, g, b]).map(|t| t.storage_and_layout()).collect();
    let mut parameters = Vec::with_capacity(items.len());
    for (tensors, (param, _, _)) in locked.chunks_exact(3).zip(items) {
        let mut addresses = [0; 3];
        for (address, (storage, layout)) in addresses.iter_mut().zip(tensors) {
            *address = f32_address(cuda(storage, "sgd")?, layout, &stream, "sgd")?;
        }
        parameters.push((addresses, param.elem_count()));
    }
    let Some((table, blocks)) = crate::sgd_table::sgd_table(&parameters, SGD_CHUNK) else { return Ok(false) };
    if blocks == 0 {
        return Ok(true);
    }
    let too_large = |what: &str| candle_core::Error::Msg(format!("sgd: too many {what} for one launch"));
    let (tensors, blocks) = (
        u32::try_from(items.len()).map_err(|_| too_large("parameters"))?,
        u32::try_from(blocks).map_err(|_| too_large("blocks"))?,
    );
    let table = stream.clone_htod(&table).map_err(|e| candle_core::Error::Msg(format!("sgd: upload: {e:?}")))?;
    let chunk = SGD_CHUNK as u32;
    let SgdUpdate { lr, momentum, weight_decay, nesterov, .. } = update;
    let nesterov = i32::from(nesterov);
    let func = device.get_or_load_custom_func("dmlp_sgd_many_f32", MODULE, PTX)?;
    let mut builder = func.builder();
    builder.arg(&table).arg(&tensors).arg(&chunk).arg(&lr).arg(&momentum).arg(&weight_decay).arg(&nesterov);
    let config = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (SGD_THREADS, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: the table holds, per parameter, the addresses of three live contiguous f32 buffers
    // of its length (locked above; parameters and buffers are distinct allocations, so no two
    // written ranges overlap) and its length, then one valid (parameter, start) per block. The
    // buffers are device memory candle reaches only through this stream, so the in-place update
    // is ordered after every earlier use and before every later one, as `Var::set`'s copy is;
    // the Rust-side storage objects are only read.
    unsafe { builder.launch(config) }
        .map_err(|e| candle_core::Error::Msg(format!("dmlp_sgd_many_f32: kernel launch failed: {e:?}")))?;
    drop(locked);
    Ok(true)
}

/// A cast between half precision and f32 by dmlp's kernel; its gradient is the cast back.
struct CastOp(DType);

/// Whether dmlp's kernels cast `from` to `to`: half precision to f32 and back.
fn castable(from: DType, to: DType) -> bool {
    matches!((from, to), (DType::BF16 | DType::F16, DType::F32) | (DType::F32, DType::BF16 | DType::F16))
}

impl candle_core::CustomOp1 for CastOp {
    fn name(&self) -> &'static str {
        "dmlp-cast"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        bail!("dmlp-cast runs on CUDA only (the CPU casts with candle's to_dtype)")
    }

    fn cuda_fwd(&self, storage: &CudaStorage, layout: &Layout) -> Result<(CudaStorage, candle_core::Shape)> {
        let out = match (storage.dtype(), self.0) {
            (DType::BF16, DType::F32) => cast_launch::<bf16, f32>(storage, layout)?,
            (DType::F16, DType::F32) => cast_launch::<f16, f32>(storage, layout)?,
            (DType::F32, DType::BF16) => cast_launch::<f32, bf16>(storage, layout)?,
            (DType::F32, DType::F16) => cast_launch::<f32, f16>(storage, layout)?,
            (from, to) => bail!("dmlp-cast: {from:?} → {to:?}"),
        };
        Ok((out, layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(cast(grad, arg.dtype())?))
    }
}

/// `dmlp_cast_{A}_{B}` over a contiguous tensor of `A`s.
fn cast_launch<A: Element, B: Element>(storage: &CudaStorage, layout: &Layout) -> Result<CudaStorage> {
    let n = layout.shape().elem_count();
    let x = view::<A>(storage, layout, "cast")?;
    let device = &storage.device;
    // SAFETY: the kernel writes each of the `n` outputs.
    let out: CudaSlice<B> = unsafe { device.alloc::<B>(n.max(1)) }?;
    launch_kernel!(device, &format!("dmlp_cast_{}_{}", A::SUFFIX, B::SUFFIX), n, &n, &x, &out);
    Ok(CudaStorage::wrap_cuda_slice(out, device.clone()))
}

/// `xs` in `dtype`: half precision to f32 and back by dmlp's kernel on CUDA (where [`takes`]),
/// otherwise candle's `to_dtype`.
pub(crate) fn cast(xs: &Tensor, dtype: DType) -> Result<Tensor> {
    if xs.dtype() == dtype || !castable(xs.dtype(), dtype) || !takes(xs) {
        return xs.to_dtype(dtype);
    }
    xs.contiguous()?.apply_op1(CastOp(dtype))
}
