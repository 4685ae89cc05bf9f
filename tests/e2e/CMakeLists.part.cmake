# tests/e2e/CMakeLists.part.cmake (owner: agent): the Python helper beside the
# CLI, where `tbprof run` looks for it (<bin>/../share/tbprof/python).
add_custom_target(tbprof_pyhelper ALL
  COMMAND ${CMAKE_COMMAND} -E copy_directory ${CMAKE_SOURCE_DIR}/tools/python ${CMAKE_BINARY_DIR}/share/tbprof/python
  COMMENT "tbprof Python helper -> share/tbprof/python")
install(DIRECTORY tools/python/ DESTINATION share/tbprof/python PATTERN "__pycache__" EXCLUDE)
