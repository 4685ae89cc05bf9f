# tests/e2e/CMakeLists.part.cmake (owner: agent): the Python helper beside the
# CLI, where `tbprof run` looks for it (<bin>/../share/tbprof/python).
# Compiled too (checked-hash .pyc: kept valid across copies, rebuilt when
# the source changes): every preloaded Python imports its sitecustomize at
# start-up, and where the folder is not writable (an install by root) or
# bytecode writing is off, compiling it each time was most of the helper's
# start-up cost (bench_idle: python3 -c pass).
set(TBPROF_PYC_COMMAND)
if(PYTHON3)
  set(TBPROF_PYC_COMMAND COMMAND ${PYTHON3} -m compileall -q --invalidation-mode checked-hash
      ${CMAKE_BINARY_DIR}/share/tbprof/python)
endif()
add_custom_target(tbprof_pyhelper ALL
  COMMAND ${CMAKE_COMMAND} -E copy_directory ${CMAKE_SOURCE_DIR}/tools/python ${CMAKE_BINARY_DIR}/share/tbprof/python
  ${TBPROF_PYC_COMMAND}
  COMMENT "tbprof Python helper -> share/tbprof/python")
install(DIRECTORY tools/python/ DESTINATION share/tbprof/python PATTERN "__pycache__" EXCLUDE)
if(PYTHON3)
  install(CODE "execute_process(COMMAND \"${PYTHON3}\" -m compileall -q --invalidation-mode checked-hash
                \"\$ENV{DESTDIR}\${CMAKE_INSTALL_PREFIX}/share/tbprof/python\")")
endif()

# tests/e2e/shims/*.c: LD_PRELOAD shims the e2e tests list before
# libtbprof.so, and libraries their Python programs load with ctypes
# (evalswap.c) (build/progs/lib<name>.so).
file(GLOB E2E_SHIMS CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/tests/e2e/shims/*.c)
foreach(src ${E2E_SHIMS})
  get_filename_component(name ${src} NAME_WE)
  add_library(shim_${name} SHARED ${src})
  set_target_properties(shim_${name} PROPERTIES OUTPUT_NAME ${name} LIBRARY_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/progs)
endforeach()
