// cuda_steps.cu - known GPU work per step, for checking tbprof on a real GPU.
//
//   cuda_steps [steps]      (default 10)
//
// Every step: H2D copy of 1 MiB (async, pinned), scale_kernel x2
// (grid 64,1,1 block 256,1,1), add_kernel x1 (grid 32,2,1 block 128,2,1),
// a 64 KiB memset, a D2H copy of 64 KiB (pageable, sync); one NVTX-free
// step boundary per step through tbprof_step() (looked up at run time, so
// the program runs without the preload too). Prints what one step launches
// so the checker can multiply by the captured step count.
#include <cuda_runtime.h>
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

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

#define CK(x)                                                                            \
    do {                                                                                 \
        cudaError_t e_ = (x);                                                            \
        if (e_ != cudaSuccess) {                                                         \
            fprintf(stderr, "%s: %s\n", #x, cudaGetErrorString(e_));                     \
            return 1;                                                                    \
        }                                                                                \
    } while (0)

int main(int argc, char **argv)
{
    int steps = argc > 1 ? atoi(argv[1]) : 10;
    long long (*step)(void) = (long long (*)(void))dlsym(RTLD_DEFAULT, "tbprof_step");
    const int n = 1 << 18; /* 1 MiB of floats */
    float *h, *d, *d2, *small = (float *)malloc(64 << 10);
    CK(cudaMallocHost(&h, n * sizeof(float)));
    CK(cudaMalloc(&d, n * sizeof(float)));
    CK(cudaMalloc(&d2, n * sizeof(float)));
    for (int i = 0; i < n; i++)
        h[i] = 1.0f;
    cudaStream_t s;
    CK(cudaStreamCreate(&s));
    printf("per_step kernel scale_kernel 2 grid 64,1,1 block 256,1,1\n");
    printf("per_step kernel add_kernel 1 grid 32,2,1 block 128,2,1\n");
    printf("per_step memcpy MemcpyH2D 1 bytes %d\n", (int)(n * sizeof(float)));
    printf("per_step memcpy MemcpyD2H 1 bytes %d\n", 64 << 10);
    printf("per_step memset Memset 1 bytes %d\n", 64 << 10);
    fflush(stdout);
    for (int k = 0; k < steps; k++) {
        if (step)
            step();
        CK(cudaMemcpyAsync(d, h, n * sizeof(float), cudaMemcpyHostToDevice, s));
        scale_kernel<<<dim3(64, 1, 1), dim3(256, 1, 1), 0, s>>>(d, 1.001f, n);
        scale_kernel<<<dim3(64, 1, 1), dim3(256, 1, 1), 0, s>>>(d, 0.999f, n);
        add_kernel<<<dim3(32, 2, 1), dim3(128, 2, 1), 0, s>>>(d2, d, n);
        CK(cudaMemsetAsync(d2, 0, 64 << 10, s));
        CK(cudaMemcpy(small, d2, 64 << 10, cudaMemcpyDeviceToHost)); /* legacy stream: waits */
        CK(cudaStreamSynchronize(s));
    }
    if (step)
        step(); /* closes the last step */
    printf("done %d steps\n", steps);
    return 0;
}
