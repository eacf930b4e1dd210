// dmlp's own CUDA kernels (feature `cuda`), compiled to PTX by build.rs with nvcc and loaded by
// `cuda_kernels.rs`: ReLU and its one-pass backward, the residual ReLU(a + b), and max / average
// pooling with PyTorch's windows, forward and backward. Each computes what the CPU op of the
// same name computes (`activation_op.rs`, `pool.rs`), in the same order for f32, so the two agree
// to the bit there; bf16 and f16 compute in f32 and round once, as the CPU ops' f32 round trip.
// Backward passes gather (one thread per input element, outputs in row-major order): no atomics,
// the same result on every run.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

__device__ __forceinline__ float up(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float up(__half v) { return __half2float(v); }
__device__ __forceinline__ float up(float v) { return v; }
__device__ __forceinline__ double up(double v) { return v; }

template <typename T> __device__ __forceinline__ T down(float v);
template <> __device__ __forceinline__ __nv_bfloat16 down<__nv_bfloat16>(float v) { return __float2bfloat16(v); }
template <> __device__ __forceinline__ __half down<__half>(float v) { return __float2half(v); }
template <> __device__ __forceinline__ float down<float>(float v) { return v; }
template <typename T> __device__ __forceinline__ T down(double v) { return (T)v; }

template <typename T> struct Acc { typedef float type; };
template <> struct Acc<double> { typedef double type; };

#define GRID_STRIDE(i, n) \
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (size_t)blockDim.x * gridDim.x)

// y = x > 0 ? x : 0
template <typename T> __device__ void relu(size_t n, const T* x, T* y) {
  const T zero = down<T>((typename Acc<T>::type)0);
  GRID_STRIDE(i, n) { y[i] = up(x[i]) > 0 ? x[i] : zero; }
}

// s = a + b (rounded to T); y = s > 0 ? s : 0
template <typename T> __device__ void add_relu(size_t n, const T* a, const T* b, T* y) {
  typedef typename Acc<T>::type A;
  const T zero = down<T>((A)0);
  GRID_STRIDE(i, n) {
    const T s = down<T>((A)(up(a[i]) + up(b[i])));
    y[i] = up(s) > 0 ? s : zero;
  }
}

// dx = y > 0 ? dy : 0
template <typename T> __device__ void relu_mask(size_t n, const T* y, const T* dy, T* dx) {
  const T zero = down<T>((typename Acc<T>::type)0);
  GRID_STRIDE(i, n) { dx[i] = up(y[i]) > 0 ? dy[i] : zero; }
}

// The window of output `o` along one axis: rows [lo, hi) of the input and the window's length
// clipped only to the padded input (PyTorch's pool_size), as pool.rs's `Geometry::window`.
struct Window {
  int lo, hi, padded;
};
__device__ __forceinline__ Window window(int o, int len, int k, int s, int p) {
  const int start = o * s - p;
  const int end_padded = min(start + k, len + p);
  Window w;
  w.padded = end_padded - start;
  w.lo = max(start, 0);
  w.hi = max(min(end_padded, len), 0);
  return w;
}

// The first maximum of a window in row-major order; a NaN wins (pool.rs's `argmax`).
template <typename T>
__device__ __forceinline__ int window_argmax(const T* plane, int width, Window r, Window c) {
  typedef typename Acc<T>::type A;
  int best_idx = r.lo * width + c.lo;
  A best = up(plane[best_idx]);
  for (int y = r.lo; y < r.hi; ++y) {
    for (int x = c.lo; x < c.hi; ++x) {
      const A v = up(plane[y * width + x]);
      if (v > best || v != v) {
        best = v;
        best_idx = y * width + x;
        if (v != v) return best_idx;
      }
    }
  }
  return best_idx;
}

struct Pool {
  int h, w, oh, ow, k, s, p;
};

// The outputs whose windows hold input row `i`: [first, last].
__device__ __forceinline__ void covering(int i, int k, int s, int p, int out, int* first, int* last) {
  const int a = i + p - k;
  *first = a < 0 ? 0 : a / s + 1;
  *last = min((i + p) / s, out - 1);
}

template <typename T> __device__ void max_pool_forward(size_t n_out, Pool g, const T* x, T* y) {
  GRID_STRIDE(i, n_out) {
    const int ox = (int)(i % g.ow), oy = (int)((i / g.ow) % g.oh);
    const T* plane = x + (i / ((size_t)g.ow * g.oh)) * (size_t)g.h * g.w;
    const Window r = window(oy, g.h, g.k, g.s, g.p), c = window(ox, g.w, g.k, g.s, g.p);
    y[i] = plane[window_argmax(plane, g.w, r, c)];
  }
}

// dx at each input: the sum of the output gradients whose window's first maximum it is.
template <typename T> __device__ void max_pool_backward(size_t n_in, Pool g, const T* x, const T* dy, T* dx) {
  typedef typename Acc<T>::type A;
  GRID_STRIDE(i, n_in) {
    const int ix = (int)(i % g.w), iy = (int)((i / g.w) % g.h);
    const size_t plane_index = i / ((size_t)g.w * g.h);
    const T* plane = x + plane_index * (size_t)g.h * g.w;
    const T* grad = dy + plane_index * (size_t)g.oh * g.ow;
    int oy0, oy1, ox0, ox1;
    covering(iy, g.k, g.s, g.p, g.oh, &oy0, &oy1);
    covering(ix, g.k, g.s, g.p, g.ow, &ox0, &ox1);
    A sum = 0;
    const int me = iy * g.w + ix;
    for (int oy = oy0; oy <= oy1; ++oy) {
      const Window r = window(oy, g.h, g.k, g.s, g.p);
      for (int ox = ox0; ox <= ox1; ++ox) {
        if (window_argmax(plane, g.w, r, window(ox, g.w, g.k, g.s, g.p)) == me) sum += up(grad[oy * g.ow + ox]);
      }
    }
    dx[i] = down<T>(sum);
  }
}

template <typename T>
__device__ __forceinline__ typename Acc<T>::type divisor(Window r, Window c, int count_include_pad) {
  return count_include_pad ? (typename Acc<T>::type)(r.padded * c.padded)
                           : (typename Acc<T>::type)((r.hi - r.lo) * (c.hi - c.lo));
}

template <typename T> __device__ void avg_pool_forward(size_t n_out, Pool g, int count_include_pad, const T* x, T* y) {
  typedef typename Acc<T>::type A;
  GRID_STRIDE(i, n_out) {
    const int ox = (int)(i % g.ow), oy = (int)((i / g.ow) % g.oh);
    const T* plane = x + (i / ((size_t)g.ow * g.oh)) * (size_t)g.h * g.w;
    const Window r = window(oy, g.h, g.k, g.s, g.p), c = window(ox, g.w, g.k, g.s, g.p);
    A sum = 0;
    for (int yy = r.lo; yy < r.hi; ++yy)
      for (int xx = c.lo; xx < c.hi; ++xx) sum += up(plane[yy * g.w + xx]);
    y[i] = down<T>(sum / divisor<T>(r, c, count_include_pad));
  }
}

// dx at each input: Σ dy / divisor over the windows that hold it, in row-major output order.
template <typename T> __device__ void avg_pool_backward(size_t n_in, Pool g, int count_include_pad, const T* dy, T* dx) {
  typedef typename Acc<T>::type A;
  GRID_STRIDE(i, n_in) {
    const int ix = (int)(i % g.w), iy = (int)((i / g.w) % g.h);
    const T* grad = dy + (i / ((size_t)g.w * g.h)) * (size_t)g.oh * g.ow;
    int oy0, oy1, ox0, ox1;
    covering(iy, g.k, g.s, g.p, g.oh, &oy0, &oy1);
    covering(ix, g.k, g.s, g.p, g.ow, &ox0, &ox1);
    A sum = 0;
    for (int oy = oy0; oy <= oy1; ++oy) {
      const Window r = window(oy, g.h, g.k, g.s, g.p);
      for (int ox = ox0; ox <= ox1; ++ox) {
        const Window c = window(ox, g.w, g.k, g.s, g.p);
        sum += up(grad[oy * g.ow + ox]) / divisor<T>(r, c, count_include_pad);
      }
    }
    dx[i] = down<T>(sum);
  }
}

// Casts between half precision and f32, one element per thread (candle's own bf16 → f32 cast
// writes eight floats per thread with strided stores: about a third of the bandwidth). Rounding
// to nearest even, as candle's.
#define CAST(NAME, S, D, EXPR)                                                  \
  extern "C" __global__ void NAME(size_t n, const S* x, D* y) {                 \
    GRID_STRIDE(i, n) { y[i] = EXPR; }                                          \
  }
CAST(dmlp_cast_bf16_f32, __nv_bfloat16, float, __bfloat162float(x[i]))
CAST(dmlp_cast_f32_bf16, float, __nv_bfloat16, __float2bfloat16_rn(x[i]))
CAST(dmlp_cast_f16_f32, __half, float, __half2float(x[i]))
CAST(dmlp_cast_f32_f16, float, __half, __float2half_rn(x[i]))

// SGD with momentum (dampening 0), as dmlp_train::Sgd composes it from candle's ops, each product
// and sum rounded on its own (no FMA): the CPU's and candle's CUDA arithmetic, step for step.
// The buffer first (in place): g' = g + wd·p; buf = first ? g' : momentum·buf + g'.
extern "C" __global__ void dmlp_sgd_buffer_f32(size_t n, float momentum, float wd, int first, const float* p,
                                               const float* g, float* buf) {
  GRID_STRIDE(i, n) {
    const float g1 = wd != 0.f ? __fadd_rn(g[i], __fmul_rn(p[i], wd)) : g[i];
    buf[i] = first ? g1 : __fadd_rn(__fmul_rn(buf[i], momentum), g1);
  }
}

// Then the parameter (in place): d = nesterov ? g' + momentum·buf : buf; p = p − lr·d.
extern "C" __global__ void dmlp_sgd_param_f32(size_t n, float lr, float momentum, float wd, int nesterov,
                                              const float* g, const float* buf, float* p) {
  GRID_STRIDE(i, n) {
    float d = buf[i];
    if (nesterov) {
      const float g1 = wd != 0.f ? __fadd_rn(g[i], __fmul_rn(p[i], wd)) : g[i];
      d = __fadd_rn(g1, __fmul_rn(buf[i], momentum));
    }
    p[i] = __fsub_rn(p[i], __fmul_rn(d, lr));
  }
}

// Rounded exactly as written (no contraction into a fused multiply-add), in f32 or f64.
__device__ __forceinline__ float sub_rn(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ double sub_rn(double a, double b) { return __dsub_rn(a, b); }
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }

// The per-channel blend z = a + s·(b − a), s one value per row of hw elements (blend_op.rs):
// (b − a)·s + a, each step rounded, as the CPU op and candle's composed ops compute it.
template <typename T> __device__ void blend(size_t n, size_t hw, const T* a, const T* b, const T* s, T* z) {
  GRID_STRIDE(i, n) {
    const typename Acc<T>::type u = up(a[i]);
    z[i] = down<T>(add_rn(mul_rn(sub_rn(up(b[i]), u), up(s[i / hw])), u));
  }
}

// Its input gradients into one buffer: out[i] = g − g·s (for a), out[n + i] = g·s (for b).
template <typename T> __device__ void blend_input_grads(size_t n, size_t hw, const T* g, const T* s, T* out) {
  GRID_STRIDE(i, n) {
    const typename Acc<T>::type v = up(g[i]);
    const typename Acc<T>::type m = mul_rn(v, up(s[i / hw]));
    out[i] = down<T>(sub_rn(v, m));
    out[n + i] = down<T>(m);
  }
}

// Its weight gradient ds[row] = Σ g·(b − a) over the row's hw elements: one block of
// ROW_THREADS threads per row, a fixed-order tree sum (the same result on every run).
#define ROW_THREADS 256  // ROW_THREADS in cuda_kernels.rs; a power of two
template <typename T> __device__ void blend_weight_grads(size_t hw, const T* a, const T* b, const T* g, T* ds) {
  typedef typename Acc<T>::type A;
  __shared__ A partial[ROW_THREADS];
  const size_t row = blockIdx.x;
  A sum = 0;
  for (size_t j = threadIdx.x; j < hw; j += blockDim.x) {
    const size_t i = row * hw + j;
    sum += up(g[i]) * (up(b[i]) - up(a[i]));
  }
  partial[threadIdx.x] = sum;
  __syncthreads();
  for (unsigned int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) ds[row] = down<T>(partial[0]);
}

// SK's gate input (pool_mix_op.rs): per row (image, channel) of hw elements, m1 = mean(a),
// m2 = mean(b), packed[row] = σ·m1 + (1 − σ)·m2 and packed[rows + row] = m1 − m2 with σ = sigmoid(α).
// One block of ROW_THREADS threads per row, fixed-order tree sums.
__device__ __forceinline__ float sigmoid_of(float x) { return 1.f / (1.f + expf(-x)); }
__device__ __forceinline__ double sigmoid_of(double x) { return 1.0 / (1.0 + exp(-x)); }

template <typename T>
__device__ void pool_mix(size_t rows, size_t hw, const T* a, const T* b, const T* alpha, T* packed) {
  typedef typename Acc<T>::type A;
  __shared__ A sa[ROW_THREADS];
  __shared__ A sb[ROW_THREADS];
  const size_t row = blockIdx.x;
  A suma = 0, sumb = 0;
  for (size_t j = threadIdx.x; j < hw; j += blockDim.x) {
    suma += up(a[row * hw + j]);
    sumb += up(b[row * hw + j]);
  }
  sa[threadIdx.x] = suma;
  sb[threadIdx.x] = sumb;
  __syncthreads();
  for (unsigned int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) {
      sa[threadIdx.x] += sa[threadIdx.x + stride];
      sb[threadIdx.x] += sb[threadIdx.x + stride];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    const A m1 = sa[0] / (A)hw, m2 = sb[0] / (A)hw;
    const A s = sigmoid_of((A)up(alpha[0]));
    packed[row] = down<T>(s * m1 + (1 - s) * m2);
    packed[rows + row] = down<T>(m1 - m2);
  }
}

// Its input gradients into one buffer: out[i] = dgv[row]·σ/hw (for a), out[n + i] = dgv[row]·(1 − σ)/hw.
template <typename T>
__device__ void pool_mix_input_grads(size_t n, size_t hw, const T* dgv, const T* alpha, T* out) {
  typedef typename Acc<T>::type A;
  const A s = sigmoid_of((A)up(alpha[0]));
  GRID_STRIDE(i, n) {
    const A g = up(dgv[i / hw]) / (A)hw;
    out[i] = down<T>(g * s);
    out[n + i] = down<T>(g * (1 - s));
  }
}

// Its α gradient: Σ dgv·(m1 − m2)·σ(1 − σ), one block.
template <typename T>
__device__ void pool_mix_alpha_grad(size_t rows, const T* dgv, const T* diff, const T* alpha, T* dalpha) {
  typedef typename Acc<T>::type A;
  __shared__ A partial[ROW_THREADS];
  A sum = 0;
  for (size_t r = threadIdx.x; r < rows; r += blockDim.x) sum += up(dgv[r]) * up(diff[r]);
  partial[threadIdx.x] = sum;
  __syncthreads();
  for (unsigned int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    const A s = sigmoid_of((A)up(alpha[0]));
    dalpha[0] = down<T>(partial[0] * s * (1 - s));
  }
}

// Both updates for many parameters in one launch, after their first step: `table` holds, per
// parameter t, {p, g, buf, n} (addresses and length), then per block {t, first element}; each
// block updates elements [first, min(n, first + chunk_len)) of its parameter, computing exactly
// what dmlp_sgd_buffer_f32 and then dmlp_sgd_param_f32 compute (the parameter read before it is
// written).
extern "C" __global__ void dmlp_sgd_many_f32(const unsigned long long* table, unsigned int tensors,
                                             unsigned int chunk_len, float lr, float momentum, float wd,
                                             int nesterov) {
  const unsigned long long* block = table + 4 * (size_t)tensors + 2 * (size_t)blockIdx.x;
  const unsigned long long* entry = table + 4 * block[0];
  float* p = (float*)entry[0];
  const float* g = (const float*)entry[1];
  float* buf = (float*)entry[2];
  const size_t first = block[1];
  const size_t end = min((size_t)entry[3], first + chunk_len);
  for (size_t i = first + threadIdx.x; i < end; i += blockDim.x) {
    const float g1 = wd != 0.f ? __fadd_rn(g[i], __fmul_rn(p[i], wd)) : g[i];
    const float b = __fadd_rn(__fmul_rn(buf[i], momentum), g1);
    buf[i] = b;
    const float d = nesterov ? __fadd_rn(g1, __fmul_rn(b, momentum)) : b;
    p[i] = __fsub_rn(p[i], __fmul_rn(d, lr));
  }
}

#define EXPORT(SUFFIX, T)                                                                                       \
  extern "C" __global__ void dmlp_relu_##SUFFIX(size_t n, const T* x, T* y) { relu(n, x, y); }                \
  extern "C" __global__ void dmlp_add_relu_##SUFFIX(size_t n, const T* a, const T* b, T* y) {                 \
    add_relu(n, a, b, y);                                                                                       \
  }                                                                                                             \
  extern "C" __global__ void dmlp_relu_mask_##SUFFIX(size_t n, const T* y, const T* dy, T* dx) {              \
    relu_mask(n, y, dy, dx);                                                                                    \
  }                                                                                                             \
  extern "C" __global__ void dmlp_max_pool_forward_##SUFFIX(size_t n, Pool g, const T* x, T* y) {             \
    max_pool_forward(n, g, x, y);                                                                               \
  }                                                                                                             \
  extern "C" __global__ void dmlp_max_pool_backward_##SUFFIX(size_t n, Pool g, const T* x, const T* dy,       \
                                                             T* dx) {                                           \
    max_pool_backward(n, g, x, dy, dx);                                                                         \
  }                                                                                                             \
  extern "C" __global__ void dmlp_avg_pool_forward_##SUFFIX(size_t n, Pool g, int count_include_pad,          \
                                                            const T* x, T* y) {                                 \
    avg_pool_forward(n, g, count_include_pad, x, y);                                                            \
  }                                                                                                             \
  extern "C" __global__ void dmlp_avg_pool_backward_##SUFFIX(size_t n, Pool g, int count_include_pad,         \
                                                             const T* dy, T* dx) {                              \
    avg_pool_backward(n, g, count_include_pad, dy, dx);                                                         \
  }                                                                                                             \
  extern "C" __global__ void dmlp_blend_##SUFFIX(size_t n, size_t hw, const T* a, const T* b, const T* s,      \
                                                 T* z) {                                                        \
    blend(n, hw, a, b, s, z);                                                                                   \
  }                                                                                                             \
  extern "C" __global__ void dmlp_blend_input_grads_##SUFFIX(size_t n, size_t hw, const T* g, const T* s,      \
                                                             T* out) {                                          \
    blend_input_grads(n, hw, g, s, out);                                                                        \
  }                                                                                                             \
  extern "C" __global__ void dmlp_blend_weight_grads_##SUFFIX(size_t hw, const T* a, const T* b, const T* g,   \
                                                              T* ds) {                                          \
    blend_weight_grads(hw, a, b, g, ds);                                                                        \
  }                                                                                                             \
  extern "C" __global__ void dmlp_pool_mix_##SUFFIX(size_t rows, size_t hw, const T* a, const T* b,            \
                                                    const T* alpha, T* packed) {                                \
    pool_mix(rows, hw, a, b, alpha, packed);                                                                    \
  }                                                                                                             \
  extern "C" __global__ void dmlp_pool_mix_input_grads_##SUFFIX(size_t n, size_t hw, const T* dgv,             \
                                                                const T* alpha, T* out) {                       \
    pool_mix_input_grads(n, hw, dgv, alpha, out);                                                               \
  }                                                                                                             \
  extern "C" __global__ void dmlp_pool_mix_alpha_grad_##SUFFIX(size_t rows, const T* dgv, const T* diff,       \
                                                               const T* alpha, T* dalpha) {                     \
    pool_mix_alpha_grad(rows, dgv, diff, alpha, dalpha);                                                        \
  }

EXPORT(f32, float)
EXPORT(f64, double)
EXPORT(bf16, __nv_bfloat16)
EXPORT(f16, __half)
