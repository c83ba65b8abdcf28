# berth_add_driver(<target> SOURCES ...)
# Builds a Berth driver: a MODULE library named <target>.so, hidden visibility (only berth_driver_entry is
# exported), linked to Berth::driver_sdk. Used in-tree and shipped in the BerthDriverSDK package.
set(BERTH_DRIVER_EXPORT_MAP ${CMAKE_CURRENT_LIST_DIR}/berth-driver.map CACHE INTERNAL "linker version script of drivers")
function(berth_add_driver target)
  cmake_parse_arguments(ARG "" "" "SOURCES" ${ARGN})
  add_library(${target} MODULE ${ARG_SOURCES})
  target_link_libraries(${target} PRIVATE Berth::driver_sdk)
  set_target_properties(${target} PROPERTIES PREFIX "" C_VISIBILITY_PRESET hidden CXX_VISIBILITY_PRESET hidden
                                             VISIBILITY_INLINES_HIDDEN ON)
  if(CMAKE_SYSTEM_NAME STREQUAL "Linux")
    target_link_options(${target} PRIVATE -Wl,--no-undefined "LINKER:--version-script=${BERTH_DRIVER_EXPORT_MAP}")
    set_property(TARGET ${target} APPEND PROPERTY LINK_DEPENDS ${BERTH_DRIVER_EXPORT_MAP})
  endif()
endfunction()
