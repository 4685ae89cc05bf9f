# tests/fuzz/CMakeLists.part.cmake (owner: writers)

# agent/xspace_read.c decodes with protobuf-c's generated code: it needs the
# generated header at compile time. Only the include path and the build
# order are added here; tbprof_agent does not link tbprof_proto, so
# libtbprof.so (which never calls the reader) gets none of it, and tools
# and tests that read link tbprof_proto themselves.
set_source_files_properties(${CMAKE_SOURCE_DIR}/agent/xspace_read.c PROPERTIES
  INCLUDE_DIRECTORIES "${PROTO_OUT};${PROTOBUF_C_INCLUDE_DIRS}")
add_dependencies(tbprof_agent tbprof_proto)

# Bounded mutation fuzzing of the reader and `tbprof dump` paths: a few
# thousand cases, seeded from a synthetic capture written by our encoder.
if(TARGET fuzz_dump)
  add_test(NAME unit.fuzz_dump COMMAND fuzz_dump 4000)
  set_tests_properties(unit.fuzz_dump PROPERTIES ENVIRONMENT "${TEST_ENV}" LABELS "unit;cpu" TIMEOUT 120)
endif()

# tbprof summary / folded over mutated xplane.pb, and the tools over mutated
# trace.json.gz (owner: reliability). `cmake --build . --target fuzz_more`
# runs many more cases of both fuzzers (not part of ctest).
if(TARGET fuzz_summary)
  add_test(NAME unit.fuzz_summary COMMAND fuzz_summary 3000)
  set_tests_properties(unit.fuzz_summary PROPERTIES ENVIRONMENT "${TEST_ENV}" LABELS "unit;cpu" TIMEOUT 120)
  add_custom_target(fuzz_more
    COMMAND ${CMAKE_COMMAND} -E env TBPROF_BUILD=${CMAKE_BINARY_DIR} $<TARGET_FILE:fuzz_summary> 100000 1
    COMMAND ${CMAKE_COMMAND} -E env TBPROF_BUILD=${CMAKE_BINARY_DIR} $<TARGET_FILE:fuzz_dump> 100000 1
    DEPENDS fuzz_summary fuzz_dump tbprof_cli USES_TERMINAL)
endif()
