// cuda_steps.cu - known GPU work per step, for checking tbprof on a real GPU.
//
//   cuda_steps MODE [steps]      MODE: profiler | nvtx | api; steps default 10
//
// How each step is marked, so one program checks each step source:
//   profiler  cudaProfilerStart() ... cudaProfilerStop() around the step
//             (TBPROF_CUDA_STEPS; needs the shared cudart: pack.sh builds
//             with -cudart shared, nvcc's static default is not interposable)
//   nvtx      nvtxRangePushA("step <k>") ... nvtxRangePop()
//             (TBPROF_NVTX_STEP="step ")
//   api       tbprof_step() at each step's start (looked up at run time, so
//             the program also runs without the preload)
//
// Every step: a 1 MiB async H2D copy from pinned memory, scale_kernel x2
// (grid 64,1,1 block 256,1,1), add_kernel x1 (grid 32,2,1 block 128,2,1),
// one CUDA graph launch holding graph_kernel (grid 16,1,1 block 64,1,1),
// a 64 KiB memset, a cudaMalloc/cudaFree pair of 256 KiB, a 64 KiB sync D2H
// copy into pageable memory, and one cudaStreamSynchronize. The "per_step"
// lines it prints are what the checker multiplies by the captured step count.
#include <cuda_profiler_api.h>
#include <cuda_runtime.h>
#include <dlfcn.h>
#include <nvtx3/nvToolsExt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

__global__ void scale_kernel(float *x, float a, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    for (; i < n; i += gridDim.x * blockDim.x)
        x[i] *= a;
}

__global__ void add_kernel(float *y, const float *x, int n)
{
    int i = (blockIdx.y * gridDim.x + blockIdx.x) * (blockDim.x * blockDim.y) + threadIdx.y * blockDim.x +
            threadIdx.x;
    for (; i < n; i += gridDim.x * gridDim.y * blockDim.x * blockDim.y)
        y[i] += x[i];
}

__global__ void graph_kernel(float *x, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    for (; i < n; i += gridDim.x * blockDim.x)
        x[i] = x[i] * 0.5f + 1.0f;
}

#define CK(x)                                                                            \
    do {                                                                                 \
        cudaError_t e_ = (x);                                                            \
        if (e_ != cudaSuccess) {                                                         \
            fprintf(stderr, "cuda_steps: %s: %s\n", #x, cudaGetErrorString(e_));         \
            return 1;                                                                    \
        }                                                                                \
    } while (0)

enum { M_PROFILER, M_NVTX, M_API };

int main(int argc, char **argv)
{
    int mode = -1;
    if (argc > 1 && !strcmp(argv[1], "profiler"))
        mode = M_PROFILER;
    else if (argc > 1 && !strcmp(argv[1], "nvtx"))
        mode = M_NVTX;
    else if (argc > 1 && !strcmp(argv[1], "api"))
        mode = M_API;
    if (mode < 0) {
        fprintf(stderr, "usage: cuda_steps profiler|nvtx|api [steps]\n");
        return 2;
    }
    int steps = argc > 2 ? atoi(argv[2]) : 10;
    long long (*step)(void) = (long long (*)(void))dlsym(RTLD_DEFAULT, "tbprof_step");
    const int n = 1 << 18; /* 1 MiB of floats */
    const size_t small_bytes = 64 << 10, scratch_bytes = 256 << 10;
    float *h, *d, *d2, *small = (float *)malloc(small_bytes);
    CK(cudaMallocHost(&h, n * sizeof(float)));
    CK(cudaMalloc(&d, n * sizeof(float)));
    CK(cudaMalloc(&d2, n * sizeof(float)));
    for (int i = 0; i < n; i++)
        h[i] = 1.0f;
    cudaStream_t s;
    CK(cudaStreamCreate(&s));
    /* the graph: captured once, before any step, replayed every step */
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
    graph_kernel<<<dim3(16, 1, 1), dim3(64, 1, 1), 0, s>>>(d2, n);
    CK(cudaStreamEndCapture(s, &graph));
    CK(cudaGraphInstantiate(&exec, graph, 0));
    CK(cudaDeviceSynchronize());
    printf("per_step kernel scale_kernel 2 grid 64,1,1 block 256,1,1\n");
    printf("per_step kernel add_kernel 1 grid 32,2,1 block 128,2,1\n");
    printf("per_step graph_kernel graph_kernel 1 grid 16,1,1 block 64,1,1\n");
    printf("per_step memcpy MemcpyH2D 1 bytes %d\n", (int)(n * sizeof(float)));
    printf("per_step memcpy MemcpyD2H 1 bytes %d\n", (int)small_bytes);
    printf("per_step memset Memset 1 bytes %d\n", (int)small_bytes);
    printf("per_step memory MemoryAlloc 1 bytes %d\n", (int)scratch_bytes);
    printf("per_step memory MemoryFree 1 bytes %d\n", (int)scratch_bytes);
    printf("per_step sync Stream_Sync 1\n");
    printf("per_step api cudaLaunchKernel 3\n");
    printf("per_step api cudaGraphLaunch 1\n");
    printf("per_step api cudaMemcpyAsync 1\n");
    printf("per_step api cudaMemcpy 1\n");
    printf("per_step api cudaMemsetAsync 1\n");
    fflush(stdout);
    for (int k = 0; k < steps; k++) {
        char name[32];
        if (mode == M_PROFILER)
            CK(cudaProfilerStart());
        else if (mode == M_NVTX) {
            snprintf(name, sizeof(name), "step %d", k);
            nvtxRangePushA(name);
        } else if (step)
            step();
        CK(cudaMemcpyAsync(d, h, n * sizeof(float), cudaMemcpyHostToDevice, s));
        scale_kernel<<<dim3(64, 1, 1), dim3(256, 1, 1), 0, s>>>(d, 1.001f, n);
        scale_kernel<<<dim3(64, 1, 1), dim3(256, 1, 1), 0, s>>>(d, 0.999f, n);
        add_kernel<<<dim3(32, 2, 1), dim3(128, 2, 1), 0, s>>>(d2, d, n);
        CK(cudaGraphLaunch(exec, s));
        CK(cudaMemsetAsync(d2, 0, small_bytes, s));
        float *scratch;
        CK(cudaMalloc(&scratch, scratch_bytes));
        CK(cudaFree(scratch));
        CK(cudaMemcpy(small, d2, small_bytes, cudaMemcpyDeviceToHost)); /* legacy stream: waits */
        CK(cudaStreamSynchronize(s));
        if (mode == M_PROFILER)
            CK(cudaProfilerStop());
        else if (mode == M_NVTX)
            nvtxRangePop();
    }
    if (mode == M_API && step)
        step(); /* closes the last step */
    CK(cudaGraphExecDestroy(exec));
    CK(cudaGraphDestroy(graph));
    printf("done %d steps\n", steps);
    return 0;
}
