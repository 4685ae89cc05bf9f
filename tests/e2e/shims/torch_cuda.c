/* torch_cuda.c - builds libtorch_cuda.so, a stand-in for PyTorch's CUDA
 * library: listed in LD_PRELOAD, it makes a test process look like a
 * PyTorch job to tbprof (which only asks whether a library of that name is
 * loaded). It defines nothing else. */
__attribute__((visibility("default"))) int tbtest_torch_cuda_stub;
