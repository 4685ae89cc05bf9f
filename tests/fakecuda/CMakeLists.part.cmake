# tests/fakecuda (owner: cudasteps): a fake libcudart.so exporting
# cudaProfilerStart/Stop and cuProfilerStart/Stop, for the GPU-less tests of
# the CUDA step sources (tests/e2e/test_agent_cudasteps.py). Every build,
# CUPTI or not: the wrappers it tests need no CUDA header.
#   build/fakecuda/libcudart.so
add_library(fakecudart SHARED ${CMAKE_SOURCE_DIR}/tests/fakecuda/fakecudart.c)
set_target_properties(fakecudart PROPERTIES OUTPUT_NAME cudart
  LIBRARY_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/fakecuda)
if(TARGET prog_cudasteps)
  add_dependencies(prog_cudasteps fakecudart)
endif()
# tests/e2e/progs/nvtx_steps.c includes the NVTX v3 headers (header-only)
# from the CUDA toolkit when there is one; without them it builds a stub
# that tells the test to skip.
if(TARGET prog_nvtx_steps)
  find_path(NVTX3_INCLUDE nvtx3/nvToolsExt.h
    PATHS ${TBPROF_CUDA_ROOT}/include /usr/local/cuda/include NO_DEFAULT_PATH)
  if(NVTX3_INCLUDE)
    target_include_directories(prog_nvtx_steps PRIVATE ${NVTX3_INCLUDE})
  endif()
endif()
