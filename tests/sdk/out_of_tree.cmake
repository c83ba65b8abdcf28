# Installs the SDK from BINARY_DIR into a scratch prefix, builds examples/hello-driver against it as a separate
# project, and loads the result with the conformance kit. Run with cmake -P (see tests/CMakeLists.txt).
file(REMOVE_RECURSE ${WORK_DIR})
execute_process(COMMAND ${CMAKE_COMMAND} --install ${BINARY_DIR} --component Unspecified --prefix ${WORK_DIR}/prefix
                RESULT_VARIABLE rc OUTPUT_QUIET)
if(rc)
  message(FATAL_ERROR "installing the SDK failed")
endif()
if(NOT EXISTS ${WORK_DIR}/prefix/include/berth/driver.h)
  message(FATAL_ERROR "the installed SDK has no berth/driver.h")
endif()
execute_process(COMMAND ${CMAKE_COMMAND} -S ${SOURCE_DIR}/examples/hello-driver -B ${WORK_DIR}/build
                        -DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix RESULT_VARIABLE rc)
if(rc)
  message(FATAL_ERROR "configuring the out-of-tree driver failed")
endif()
execute_process(COMMAND ${CMAKE_COMMAND} --build ${WORK_DIR}/build RESULT_VARIABLE rc)
if(rc)
  message(FATAL_ERROR "building the out-of-tree driver failed")
endif()
execute_process(COMMAND ${CONFORMANCE} ${WORK_DIR}/build/berth_driver_hello.so "{}" "identity is well-formed"
                RESULT_VARIABLE rc)
if(rc)
  message(FATAL_ERROR "the out-of-tree driver did not load")
endif()
