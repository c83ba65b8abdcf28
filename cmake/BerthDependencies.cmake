# Every dependency comes from Debian 12 packages; see .ci/run for the package list.
find_package(Threads REQUIRED)

# Debian's PocoDataMySQL config refers to a MySQL::client target that nothing defines: define it first.
if(NOT TARGET MySQL::client)
  find_library(MYSQLCLIENT_LIBRARY NAMES mariadb mysqlclient REQUIRED)
  find_path(MYSQLCLIENT_INCLUDE_DIR mysql.h PATH_SUFFIXES mariadb mysql REQUIRED)
  add_library(MySQL::client UNKNOWN IMPORTED)
  set_target_properties(MySQL::client PROPERTIES IMPORTED_LOCATION ${MYSQLCLIENT_LIBRARY}
                                                 INTERFACE_INCLUDE_DIRECTORIES ${MYSQLCLIENT_INCLUDE_DIR})
endif()
find_package(Poco REQUIRED COMPONENTS Foundation Net Util JSON Data DataSQLite DataMySQL)
find_package(Boost 1.74 REQUIRED COMPONENTS filesystem)
find_package(spdlog REQUIRED)
find_package(tomlplusplus REQUIRED)
find_package(LibArchive REQUIRED)
find_package(SQLite3 REQUIRED)  # libsqlite3-dev: the SQLite store's prepared statements (Poco::Data compiles per call)
find_package(utf8cpp REQUIRED)  # libutfcpp-dev: UTF-8 validation and repair (header-only)
find_package(CLI11 REQUIRED)  # libcli11-dev: the berth CLI's arguments (header-only)
find_package(prometheus-cpp CONFIG REQUIRED)  # prometheus-cpp-dev: metrics registry (only prometheus-cpp::core linked)
if(BERTH_BUILD_TESTS)
  find_package(Catch2 2 REQUIRED)
  include(Catch)
endif()
