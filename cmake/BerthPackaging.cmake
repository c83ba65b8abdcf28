# Installation layout and the Debian package (CPack DEB). `cmake --install build` (prefix /usr by default) lays out:
#   /usr/bin/berthd                      the daemon (host/CMakeLists.txt)
#   /usr/lib/berth/drivers/*.so          the in-tree drivers (BERTH_INSTALL_DRIVERDIR; berthd searches it by default)
#   /usr/libexec/berth/berth-agent       the static in-sandbox agent (agent/CMakeLists.txt); the engine drivers
#                                        mount it into every session (their default agent_path, plugins/common)
#   /usr/include/berth, <libdir>/cmake/BerthDriverSDK   the driver SDK (sdk/CMakeLists.txt)
#   /etc/berth/berth.toml                berth.example.toml with the database in the state directory
#   /lib/systemd/system/berthd.service   packaging/berthd.service
#   /usr/share/doc/berth                 README, docs
# Component `daemon` holds what only a machine running berthd needs (and the absolute /etc and unit paths), so that
# installing the SDK alone (`--component Unspecified --prefix DIR`, as tests/sdk/out_of_tree.cmake does) never
# writes outside DIR. `cpack -G DEB` in the build directory packs everything into one berth_<version>_<arch>.deb.

# The configuration an installed berthd starts with: the example, with the SQLite file in StateDirectory.
file(READ ${PROJECT_SOURCE_DIR}/berth.example.toml berth_config)
string(REPLACE "path = \"berth.db\"" "path = \"/var/lib/berth/berth.db\"" berth_config "${berth_config}")
if(NOT berth_config MATCHES "/var/lib/berth/berth.db")
  message(FATAL_ERROR "berth.example.toml: no `path = \"berth.db\"` line to point at /var/lib/berth")
endif()
file(GENERATE OUTPUT ${PROJECT_BINARY_DIR}/packaging/berth.toml CONTENT "${berth_config}")
set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/berth.example.toml)

install(FILES ${PROJECT_BINARY_DIR}/packaging/berth.toml DESTINATION ${CMAKE_INSTALL_FULL_SYSCONFDIR}/berth
        PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ COMPONENT daemon)
install(FILES ${PROJECT_SOURCE_DIR}/packaging/berthd.service DESTINATION /lib/systemd/system COMPONENT daemon)
install(FILES ${PROJECT_SOURCE_DIR}/README.md ${PROJECT_SOURCE_DIR}/docs/api.md ${PROJECT_SOURCE_DIR}/docs/security.md
              ${PROJECT_SOURCE_DIR}/docs/driver-sdk.md DESTINATION ${CMAKE_INSTALL_DOCDIR} COMPONENT daemon)

if(NOT CMAKE_INSTALL_PREFIX STREQUAL "/usr")
  # CPack packs into /usr, but the configuration's absolute destination follows CMAKE_INSTALL_PREFIX.
  message(STATUS "berth: CMAKE_INSTALL_PREFIX is ${CMAKE_INSTALL_PREFIX}; configure with -DCMAKE_INSTALL_PREFIX=/usr "
                 "before `cpack -G DEB` (scripts/test-package does)")
endif()
set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME berth)
set(CPACK_PACKAGE_VENDOR "Berth")
set(CPACK_PACKAGE_CONTACT "Berth developers <berth@localhost>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "sandbox runtime host: an HTTP API for isolated, throw-away places to run code")
set(CPACK_PACKAGE_DESCRIPTION
    "berthd serves an HTTP API for sandboxes (sessions and workspaces) and runs them through a driver plugin\n\
(docker, podman, fake) loaded over a small, versioned C ABI. Includes the driver SDK headers and CMake package.")
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION admin)
set(CPACK_STRIP_FILES ON)  # debug info stays in the build tree
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)  # dpkg-shlibdeps derives the library dependencies from the binaries
set(CPACK_DEBIAN_PACKAGE_DEPENDS "adduser")
set(CPACK_DEBIAN_PACKAGE_RECOMMENDS "docker.io | podman")
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA
    ${PROJECT_SOURCE_DIR}/packaging/debian/conffiles ${PROJECT_SOURCE_DIR}/packaging/debian/postinst
    ${PROJECT_SOURCE_DIR}/packaging/debian/prerm ${PROJECT_SOURCE_DIR}/packaging/debian/postrm)
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)
# Test-only components (test drivers, the conformance kit's scratch installs) never reach the package.
set(CPACK_COMPONENTS_ALL Unspecified daemon)
include(CPack)
