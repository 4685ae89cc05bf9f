# tests/unit: helper libraries the unit tests dlopen().
#   build/tests/libehtail.so: its .eh_frame_hdr table ends its segment (test_unwind)
add_library(ehtail SHARED ${CMAKE_SOURCE_DIR}/tests/unit/lib/ehtail.c)
# no sanitizer or start files: the function must be the table's only entry
target_compile_options(ehtail PRIVATE -O1 -fno-sanitize=all -fasynchronous-unwind-tables)
target_link_options(ehtail PRIVATE -nostartfiles -Wl,-T,${CMAKE_SOURCE_DIR}/tests/unit/lib/ehtail.ld)
set_target_properties(ehtail PROPERTIES LIBRARY_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/tests
  LINK_DEPENDS ${CMAKE_SOURCE_DIR}/tests/unit/lib/ehtail.ld)
if(TARGET test_unwind)
  add_dependencies(test_unwind ehtail)
  target_compile_definitions(test_unwind PRIVATE EHTAIL_LIB="${CMAKE_BINARY_DIR}/tests/libehtail.so")
endif()
#   build/tests/libdbgsplit.so: a function named only in its .symtab; test_symbols
#   strips a copy into a separate debug file (objcopy, strip) and reads it back
add_library(dbgsplit SHARED ${CMAKE_SOURCE_DIR}/tests/unit/lib/dbgsplit.c)
target_compile_options(dbgsplit PRIVATE -O1 -g -fno-sanitize=all)
target_link_options(dbgsplit PRIVATE -Wl,--build-id)
set_target_properties(dbgsplit PROPERTIES LIBRARY_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/tests)
if(TARGET test_symbols)
  add_dependencies(test_symbols dbgsplit)
  target_compile_definitions(test_symbols PRIVATE DBGSPLIT_LIB="${CMAKE_BINARY_DIR}/tests/libdbgsplit.so")
endif()
