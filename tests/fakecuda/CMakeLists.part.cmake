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
# tests/e2e/progs/nvtx_steps.c and shims/nvtx_ops.c include the NVTX v3
# headers (header-only) from the CUDA toolkit when there is one; without
# them they build stubs that tell the tests to skip.
find_path(NVTX3_INCLUDE nvtx3/nvToolsExt.h
  PATHS ${TBPROF_CUDA_ROOT}/include /usr/local/cuda/include NO_DEFAULT_PATH)
foreach(t prog_nvtx_steps shim_nvtx_ops)
  if(TARGET ${t} AND NVTX3_INCLUDE)
    target_include_directories(${t} PRIVATE ${NVTX3_INCLUDE})
    target_link_libraries(${t} PRIVATE ${CMAKE_DL_LIBS})
  endif()
endforeach()
# Two fake libcuda.so.1, one folder each:
#   build/fakecudadrv/libcuda.so.1 (fakecudadrv.c): cuDriverGetVersion and
#     cuThreadExchangeStreamCaptureMode, the first reported to the fake
#     libcupti as a returning driver API call: tests/e2e/test_gpu_fake.py
#     preloads it to check that tbprof detaches CUPTI on its own thread
#   build/fakecudabare/libcuda.so.1 (fakecudabare.c): no driver functions;
#     loaded, it makes a process "a CUDA process", which GPU tracing waits for
if(TBPROF_WITH_CUPTI)
  foreach(lib fakecudadrv fakecudabare)
    add_library(${lib} SHARED ${CMAKE_SOURCE_DIR}/tests/fakecuda/${lib}.c)
    target_link_libraries(${lib} PRIVATE ${CMAKE_DL_LIBS})
    set_target_properties(${lib} PROPERTIES OUTPUT_NAME cuda SOVERSION 1
      LIBRARY_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/${lib})
    if(TARGET prog_steps)
      add_dependencies(prog_steps ${lib})
    endif()
  endforeach()
endif()
