# berth_add_driver(<target> SOURCES ...)
# Builds a Berth driver: a MODULE library named <target>.so, hidden visibility (only berth_driver_entry is
# exported), linked to Berth::driver_sdk. Used in-tree and shipped in the BerthDriverSDK package.
function(berth_add_driver target)
  cmake_parse_arguments(ARG "" "" "SOURCES" ${ARGN})
  add_library(${target} MODULE ${ARG_SOURCES})
  target_link_libraries(${target} PRIVATE Berth::driver_sdk)
  set_target_properties(${target} PROPERTIES PREFIX "" C_VISIBILITY_PRESET hidden CXX_VISIBILITY_PRESET hidden
                                             VISIBILITY_INLINES_HIDDEN ON)
  if(CMAKE_SYSTEM_NAME STREQUAL "Linux")
    target_link_options(${target} PRIVATE -Wl,--no-undefined)
  endif()
endfunction()
