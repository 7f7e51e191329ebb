# Third-party dependencies, all from Debian bookworm packages (see scripts/install-deps.sh).
find_package(Threads REQUIRED)
find_package(Protobuf REQUIRED)  # CMake's FindProtobuf: Debian ships no protobuf config file
find_package(gRPC CONFIG REQUIRED)
find_package(absl CONFIG REQUIRED)
find_package(spdlog CONFIG REQUIRED)
find_package(fmt CONFIG REQUIRED)
find_package(nlohmann_json CONFIG REQUIRED)
find_package(CLI11 CONFIG REQUIRED)
find_package(OpenSSL REQUIRED)
find_package(ICU REQUIRED COMPONENTS uc)
if(FERRY_BUILD_TESTS)
  find_package(GTest CONFIG REQUIRED)
endif()
if(FERRY_BUILD_BENCH)
  find_package(benchmark CONFIG REQUIRED)
endif()
find_package(PkgConfig REQUIRED)
# Debian builds cpp-httplib as a shared library (libcpp-httplib.so) with a pkg-config file.
pkg_check_modules(HTTPLIB REQUIRED IMPORTED_TARGET cpp-httplib)
add_library(ferry_httplib INTERFACE)
target_link_libraries(ferry_httplib INTERFACE PkgConfig::HTTPLIB Threads::Threads)
# hiredis ships no CMake config; Debian's libhiredis-dev (0.14, no TLS) has a pkg-config file.
# Linked PRIVATE by ferry_store only: hiredis never appears in a public header.
pkg_check_modules(HIREDIS REQUIRED IMPORTED_TARGET hiredis)
# UCX ships a CMake config (ucx::ucp ucx::uct ucx::ucs); linked PRIVATE by the UCX transport only.
find_package(ucx CONFIG REQUIRED)
# xxHash (per-tensor checksums) has a pkg-config file only.
pkg_check_modules(XXHASH REQUIRED IMPORTED_TARGET libxxhash)
