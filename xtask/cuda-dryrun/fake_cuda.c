// A stand-in for the CUDA stack (driver, cuBLAS, cuRAND, the runtime, NCCL, cuDNN) that runs
// nothing on any device and counts every call: `.ci/cuda-dryrun.sh` runs a release CUDA build of
// dmlp against it on a machine without a GPU, so every host-side path of the CUDA build runs
// (candle's CUDA backend, dmlp's kernels' launch code, cuDNN's planning and calls, the staging
// uploads, the SGD address table) and what one training step asks of the driver can be counted:
// kernel launches by kernel name, allocations, copies, library calls.
//
// What it is not: no kernel runs and device memory holds nothing (addresses are numbers that
// are never dereferenced; a copy to the host writes zeros), so no value computed "on the device"
// means anything, and a driver call costs nothing here, where a real one costs microseconds.
// Page-locked host memory is real memory. The functions are the ones the release binary imports
// (`nm -D --undefined-only`) and the ones dmlp's cuDNN loader looks up; each returns success.
//
// At every stream or context synchronisation and at exit, with FAKE_CUDA_LOG set, one JSON line
// with every count so far is appended to that file; `xtask/cuda-dryrun/summarize.py` turns the lines into
// counts per training step. FAKE_CUDA_DEVICES sets the device count (default 1).
// FAKE_CUDA_TRAP_KERNEL=name makes every launch of that kernel call `fake_cuda_trap`, so that
// `gdb -ex 'break fake_cuda_trap'` shows who launches it (how the launches of a count are found).
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef unsigned long long devptr;

// ---- counting -------------------------------------------------------------------------------

#define MAX_NAMES 4096
static const char* names[MAX_NAMES];  // API function names, then kernel names
static unsigned long long counts[MAX_NAMES];
static int name_count = 0;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned long long htod_bytes = 0, dtoh_bytes = 0, alloc_bytes = 0, syncs = 0;

// The slot of `name` (interned, so kernels and API calls share one table).
static int slot_of(const char* name, int copy) {
  pthread_mutex_lock(&lock);
  for (int i = 0; i < name_count; i++) {
    if (strcmp(names[i], name) == 0) {
      pthread_mutex_unlock(&lock);
      return i;
    }
  }
  int slot = name_count < MAX_NAMES ? name_count++ : MAX_NAMES - 1;
  names[slot] = copy ? strdup(name) : name;
  pthread_mutex_unlock(&lock);
  return slot;
}

// Counts one call of the API function it is used in (the slot looked up once per function).
#define COUNT()                                      \
  do {                                               \
    static int slot_ = -1;                           \
    if (slot_ < 0) slot_ = slot_of(__func__, 0);     \
    __atomic_fetch_add(&counts[slot_], 1, __ATOMIC_RELAXED); \
  } while (0)

static void json_string(FILE* f, const char* s) {
  fputc('"', f);
  for (; *s; s++) {
    if (*s == '"' || *s == '\\') fputc('\\', f);
    fputc(*s, f);
  }
  fputc('"', f);
}

// Appends every count so far to FAKE_CUDA_LOG (one JSON line), if set.
static void snapshot(const char* at) {
  const char* path = getenv("FAKE_CUDA_LOG");
  if (!path) return;
  pthread_mutex_lock(&lock);
  FILE* f = fopen(path, "a");
  if (f) {
    fprintf(f, "{\"at\":\"%s\",\"sync\":%llu,\"htod_bytes\":%llu,\"dtoh_bytes\":%llu,\"alloc_bytes\":%llu,\"counts\":{",
            at, ++syncs, htod_bytes, dtoh_bytes, alloc_bytes);
    int first = 1;
    for (int i = 0; i < name_count; i++) {
      unsigned long long c = __atomic_load_n(&counts[i], __ATOMIC_RELAXED);
      if (!c) continue;
      if (!first) fputc(',', f);
      first = 0;
      json_string(f, names[i]);
      fprintf(f, ":%llu", c);
    }
    fputs("}}\n", f);
    fclose(f);
  }
  pthread_mutex_unlock(&lock);
}

// The counts at exit too (work after the last synchronisation).
__attribute__((destructor)) static void at_exit(void) { snapshot("exit"); }

// Device addresses: a bump pointer, 256-byte aligned, never reused (nothing is behind them).
static devptr next_address = 0x100000000000ULL;
static devptr fake_alloc(size_t bytes) {
  size_t rounded = (bytes + 255) & ~(size_t)255;
  __atomic_fetch_add(&alloc_bytes, bytes, __ATOMIC_RELAXED);
  return __atomic_fetch_add(&next_address, rounded ? rounded : 256, __ATOMIC_RELAXED);
}

// A distinct non-null handle.
static void* fake_handle(void) { return malloc(16); }

static int device_count(void) {
  const char* n = getenv("FAKE_CUDA_DEVICES");
  int count = n ? atoi(n) : 1;
  return count > 0 ? count : 1;
}

// ---- driver (libcuda) ------------------------------------------------------------------------

static __thread void* current_context = 0;
static const char* const error_text = "fake CUDA (no device): this call is not simulated";

int cuInit(unsigned flags) { COUNT(); (void)flags; return 0; }
int cuDeviceGet(int* device, int ordinal) {
  COUNT();
  if (ordinal < 0 || ordinal >= device_count()) return 101;  // CUDA_ERROR_INVALID_DEVICE
  *device = ordinal;
  return 0;
}
int cuDeviceGetAttribute(int* value, int attribute, int device) {
  COUNT();
  (void)device;
  switch (attribute) {
    case 1: *value = 1024; break;              // max threads per block
    case 10: *value = 32; break;               // warp size
    case 16: *value = 132; break;              // multiprocessors (H200)
    case 75: *value = 9; break;                // compute capability 9.0
    case 76: *value = 0; break;
    case 97: *value = 232448; break;           // shared memory per block, opt-in
    default: *value = 1; break;                // memory pools, managed memory, ...
  }
  return 0;
}
int cuDevicePrimaryCtxRetain(void** context, int device) {
  COUNT();
  *context = (void*)(uintptr_t)(0x1000 + 16 * device);
  return 0;
}
int cuDevicePrimaryCtxRelease_v2(int device) { COUNT(); (void)device; return 0; }
int cuCtxSetCurrent(void* context) { COUNT(); current_context = context; return 0; }
int cuCtxGetCurrent(void** context) { COUNT(); *context = current_context; return 0; }
int cuCtxSynchronize(void) { COUNT(); snapshot("cuCtxSynchronize"); return 0; }
int cuCtxDestroy_v2(void* context) { COUNT(); (void)context; return 0; }
int cuDeviceGetMemPool(void** pool, int device) { COUNT(); *pool = (void*)(uintptr_t)(0x2000 + 16 * device); return 0; }
int cuMemPoolSetAttribute(void* pool, int attribute, void* value) { COUNT(); (void)pool; (void)attribute; (void)value; return 0; }
int cuMemPoolTrimTo(void* pool, size_t keep) { COUNT(); (void)pool; (void)keep; return 0; }
int cuEventCreate(void** event, unsigned flags) { COUNT(); (void)flags; *event = fake_handle(); return 0; }
int cuEventDestroy_v2(void* event) { COUNT(); free(event); return 0; }
int cuEventRecord(void* event, void* stream) { COUNT(); (void)event; (void)stream; return 0; }
int cuEventSynchronize(void* event) { COUNT(); (void)event; return 0; }
int cuGetErrorString(int error, const char** text) { COUNT(); (void)error; *text = error_text; return 0; }
int cuStreamCreate(void** stream, unsigned flags) { COUNT(); (void)flags; *stream = fake_handle(); return 0; }
int cuStreamDestroy_v2(void* stream) { COUNT(); free(stream); return 0; }
int cuStreamIsCapturing(void* stream, int* status) { COUNT(); (void)stream; *status = 0; return 0; }
int cuStreamSynchronize(void* stream) { COUNT(); (void)stream; snapshot("cuStreamSynchronize"); return 0; }
int cuStreamWaitEvent(void* stream, void* event, unsigned flags) { COUNT(); (void)stream; (void)event; (void)flags; return 0; }

int cuMemAllocAsync(devptr* pointer, size_t bytes, void* stream) { COUNT(); (void)stream; *pointer = fake_alloc(bytes); return 0; }
int cuMemAlloc_v2(devptr* pointer, size_t bytes) { COUNT(); *pointer = fake_alloc(bytes); return 0; }
int cuMemFreeAsync(devptr pointer, void* stream) { COUNT(); (void)pointer; (void)stream; return 0; }
int cuMemFree_v2(devptr pointer) { COUNT(); (void)pointer; return 0; }
int cuMemHostAlloc(void** pointer, size_t bytes, unsigned flags) {
  COUNT();
  (void)flags;
  *pointer = malloc(bytes ? bytes : 1);
  return *pointer ? 0 : 2;  // CUDA_ERROR_OUT_OF_MEMORY
}
int cuMemFreeHost(void* pointer) { COUNT(); free(pointer); return 0; }
int cuMemcpyHtoDAsync_v2(devptr dst, const void* src, size_t bytes, void* stream) {
  COUNT();
  (void)dst; (void)src; (void)stream;
  __atomic_fetch_add(&htod_bytes, bytes, __ATOMIC_RELAXED);
  return 0;
}
int cuMemcpyDtoHAsync_v2(void* dst, devptr src, size_t bytes, void* stream) {
  COUNT();
  (void)src; (void)stream;
  memset(dst, 0, bytes);
  __atomic_fetch_add(&dtoh_bytes, bytes, __ATOMIC_RELAXED);
  return 0;
}
int cuMemcpyDtoDAsync_v2(devptr dst, devptr src, size_t bytes, void* stream) { COUNT(); (void)dst; (void)src; (void)bytes; (void)stream; return 0; }
int cuMemcpyPeerAsync(devptr dst, void* dst_context, devptr src, void* src_context, size_t bytes, void* stream) {
  COUNT(); (void)dst; (void)dst_context; (void)src; (void)src_context; (void)bytes; (void)stream; return 0;
}
int cuMemsetD8Async(devptr dst, unsigned char value, size_t n, void* stream) { COUNT(); (void)dst; (void)value; (void)n; (void)stream; return 0; }

// Modules and functions: a function handle is its name's slot + 1 (so launches count by name).
int cuModuleLoad(void** module, const char* file) { COUNT(); (void)file; *module = fake_handle(); return 0; }
int cuModuleLoadData(void** module, const void* image) { COUNT(); (void)image; *module = fake_handle(); return 0; }
int cuModuleUnload(void* module) { COUNT(); free(module); return 0; }
int cuModuleGetFunction(void** function, void* module, const char* name) {
  COUNT();
  (void)module;
  char kernel[512];
  snprintf(kernel, sizeof kernel, "kernel %s", name);
  *function = (void*)(uintptr_t)(slot_of(kernel, 1) + 1);
  return 0;
}
// Where a launch of the kernel named by FAKE_CUDA_TRAP_KERNEL calls in: `break fake_cuda_trap` in
// gdb shows who launched it (`bt`).
static int trapped_slot = -2;
__attribute__((noinline)) void fake_cuda_trap(const char* kernel) { __asm__ volatile("" ::"r"(kernel)); }

int cuLaunchKernel(void* function, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                   unsigned shared, void* stream, void** params, void** extra) {
  COUNT();
  (void)gx; (void)gy; (void)gz; (void)bx; (void)by; (void)bz; (void)shared; (void)stream; (void)params; (void)extra;
  uintptr_t slot = (uintptr_t)function;
  if (slot >= 1 && slot <= MAX_NAMES) __atomic_fetch_add(&counts[slot - 1], 1, __ATOMIC_RELAXED);
  if (trapped_slot == -2) {
    const char* trap = getenv("FAKE_CUDA_TRAP_KERNEL");
    char kernel[512];
    snprintf(kernel, sizeof kernel, "kernel %s", trap ? trap : "");
    trapped_slot = trap ? slot_of(kernel, 1) + 1 : -1;
  }
  if ((int)slot == trapped_slot) fake_cuda_trap(names[slot - 1]);
  return 0;
}

// ---- cuBLAS, cuRAND, the runtime, NCCL ------------------------------------------------------

int cublasCreate_v2(void** handle) { COUNT(); *handle = fake_handle(); return 0; }
int cublasDestroy_v2(void* handle) { COUNT(); free(handle); return 0; }
int cublasSetStream_v2(void* handle, void* stream) { COUNT(); (void)handle; (void)stream; return 0; }
int cublasGemmStridedBatchedEx(void) { COUNT(); return 0; }
int cublasDgemmStridedBatched(void) { COUNT(); return 0; }

int curandCreateGenerator(void** generator, int kind) { COUNT(); (void)kind; *generator = fake_handle(); return 0; }
int curandDestroyGenerator(void* generator) { COUNT(); free(generator); return 0; }
int curandSetPseudoRandomGeneratorSeed(void* generator, unsigned long long seed) { COUNT(); (void)generator; (void)seed; return 0; }
int curandSetStream(void* generator, void* stream) { COUNT(); (void)generator; (void)stream; return 0; }
int curandGenerateNormal(void) { COUNT(); return 0; }
int curandGenerateNormalDouble(void) { COUNT(); return 0; }
int curandGenerateUniform(void) { COUNT(); return 0; }
int curandGenerateUniformDouble(void) { COUNT(); return 0; }

int cudaGetDevice(int* device) { COUNT(); *device = 0; return 0; }
int cudaSetDevice(int device) { COUNT(); (void)device; return 0; }
int cudaGetDeviceCount(int* count) { COUNT(); *count = device_count(); return 0; }
int cudaDeviceGetAttribute(int* value, int attribute, int device) { COUNT(); (void)attribute; (void)device; *value = 1; return 0; }
int cudaMalloc(devptr* pointer, size_t bytes) { COUNT(); *pointer = fake_alloc(bytes); return 0; }
int cudaMallocAsync_ptsz(devptr* pointer, size_t bytes, void* stream) { COUNT(); (void)stream; *pointer = fake_alloc(bytes); return 0; }
int cudaFree(devptr pointer) { COUNT(); (void)pointer; return 0; }
int cudaFreeAsync_ptsz(devptr pointer, void* stream) { COUNT(); (void)pointer; (void)stream; return 0; }
int cudaMemsetAsync_ptsz(void) { COUNT(); return 0; }
int cudaStreamSynchronize_ptsz(void* stream) { COUNT(); (void)stream; snapshot("cudaStreamSynchronize"); return 0; }
int cudaFuncGetAttributes(void) { COUNT(); return 0; }
int cudaFuncSetAttribute(void) { COUNT(); return 0; }
int cudaOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(int* blocks) { COUNT(); *blocks = 1; return 0; }
int cudaGetLastError(void) { COUNT(); return 0; }
int cudaPeekAtLastError(void) { COUNT(); return 0; }
const char* cudaGetErrorName(int error) { COUNT(); (void)error; return "cudaFake"; }
const char* cudaGetErrorString(int error) { COUNT(); (void)error; return error_text; }

// The runtime's registration of fat binaries linked into the program (candle's kernels compiled
// by nvcc into objects), which runs in static constructors, and the launches through it.
void** __cudaRegisterFatBinary(void* fat_binary) { COUNT(); (void)fat_binary; return (void**)fake_handle(); }
void __cudaRegisterFatBinaryEnd(void** handle) { COUNT(); (void)handle; }
void __cudaUnregisterFatBinary(void** handle) { COUNT(); (void)handle; }
void __cudaRegisterFunction(void) { COUNT(); }
void __cudaRegisterVar(void) { COUNT(); }
unsigned __cudaPushCallConfiguration(void) { COUNT(); return 0; }
int __cudaPopCallConfiguration(void) { COUNT(); return 0; }
int __cudaLaunchKernel_ptsz(void) { COUNT(); return 0; }
int __cudaGetKernel(void** kernel, const void* function) { COUNT(); (void)function; *kernel = fake_handle(); return 0; }

typedef struct { char internal[128]; } nccl_id;
int ncclGetUniqueId(nccl_id* id) { COUNT(); memset(id, 7, sizeof *id); return 0; }
int ncclCommInitAll(void** comms, int count, const int* devices) {
  COUNT();
  (void)devices;
  for (int i = 0; i < count; i++) comms[i] = fake_handle();
  return 0;
}
int ncclCommInitRank(void** comm, int ranks, nccl_id id, int rank) { COUNT(); (void)ranks; (void)id; (void)rank; *comm = fake_handle(); return 0; }
int ncclAllReduce(void) { COUNT(); return 0; }
int ncclCommAbort(void* comm) { COUNT(); (void)comm; return 0; }
int ncclGroupStart(void) { COUNT(); return 0; }
int ncclGroupEnd(void) { COUNT(); return 0; }

// ---- cuDNN (the entry points crates/nn/src/cudnn_library.rs looks up) ------------------------

// cudnnConvolution*AlgoPerf_t
typedef struct {
  int algo, status;
  float time;
  size_t memory;
  int determinism, math_type, reserved[3];
} algo_perf;

size_t cudnnGetVersion(void) { COUNT(); return 91900; }
const char* cudnnGetErrorString(int status) { COUNT(); (void)status; return error_text; }
int cudnnCreate(void** handle) { COUNT(); *handle = fake_handle(); return 0; }
int cudnnSetStream(void* handle, void* stream) { COUNT(); (void)handle; (void)stream; return 0; }
int cudnnCreateTensorDescriptor(void** d) { COUNT(); *d = fake_handle(); return 0; }
int cudnnSetTensor4dDescriptor(void) { COUNT(); return 0; }
int cudnnDestroyTensorDescriptor(void* d) { COUNT(); free(d); return 0; }
int cudnnCreateFilterDescriptor(void** d) { COUNT(); *d = fake_handle(); return 0; }
int cudnnSetFilter4dDescriptor(void) { COUNT(); return 0; }
int cudnnDestroyFilterDescriptor(void* d) { COUNT(); free(d); return 0; }
int cudnnCreateConvolutionDescriptor(void** d) { COUNT(); *d = fake_handle(); return 0; }
int cudnnSetConvolution2dDescriptor(void) { COUNT(); return 0; }
int cudnnSetConvolutionGroupCount(void) { COUNT(); return 0; }
int cudnnSetConvolutionMathType(void) { COUNT(); return 0; }
int cudnnDestroyConvolutionDescriptor(void* d) { COUNT(); free(d); return 0; }

// Two offers, both deterministic: FMA math (the only one dmlp runs f32 with) and tensor-op math.
static int offer(int requested, int* returned, algo_perf* results) {
  int n = requested < 2 ? requested : 2;
  for (int i = 0; i < n; i++) {
    memset(&results[i], 0, sizeof results[i]);
    results[i].algo = 1;
    results[i].time = 1.0f;
    results[i].memory = 8u << 20;
    results[i].determinism = 1;
    results[i].math_type = i == 0 ? 3 : 1;  // CUDNN_FMA_MATH, CUDNN_TENSOR_OP_MATH
  }
  *returned = n;
  return 0;
}
#define FIND(NAME) \
  int NAME(void* h, void* a, void* b, void* c, void* o, int requested, int* returned, algo_perf* results) { \
    COUNT(); (void)h; (void)a; (void)b; (void)c; (void)o; return offer(requested, returned, results);      \
  }
FIND(cudnnGetConvolutionForwardAlgorithm_v7)
FIND(cudnnGetConvolutionBackwardDataAlgorithm_v7)
FIND(cudnnGetConvolutionBackwardFilterAlgorithm_v7)
FIND(cudnnFindConvolutionForwardAlgorithm)
FIND(cudnnFindConvolutionBackwardDataAlgorithm)
FIND(cudnnFindConvolutionBackwardFilterAlgorithm)
#define WORKSPACE(NAME) \
  int NAME(void* h, void* a, void* b, void* c, void* o, int algo, size_t* bytes) { \
    COUNT(); (void)h; (void)a; (void)b; (void)c; (void)o; (void)algo; *bytes = 8u << 20; return 0; \
  }
WORKSPACE(cudnnGetConvolutionForwardWorkspaceSize)
WORKSPACE(cudnnGetConvolutionBackwardDataWorkspaceSize)
WORKSPACE(cudnnGetConvolutionBackwardFilterWorkspaceSize)
int cudnnConvolutionForward(void) { COUNT(); return 0; }
int cudnnConvolutionBackwardData(void) { COUNT(); return 0; }
int cudnnConvolutionBackwardFilter(void) { COUNT(); return 0; }
int cudnnDeriveBNTensorDescriptor(void) { COUNT(); return 0; }
int cudnnBatchNormalizationForwardTraining(void) { COUNT(); return 0; }
int cudnnBatchNormalizationBackward(void) { COUNT(); return 0; }
