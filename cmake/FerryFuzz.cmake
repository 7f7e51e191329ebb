# libFuzzer targets. The main build uses GCC, so clang++-14 is driven directly: each fuzzer
# compiles the few sources of the parser it drives (with coverage, ASan and UBSan) and links
# system libraries found with pkg-config.
#
#   ferry_add_fuzzer(NAME name SOURCES a.cc ... [PKGS pkg ...] [LINK -lfoo ...]
#                    [DEPENDS target ...] CORPUS dir [DICT file] [SECONDS n])
#
# Registers `<name>_smoke` in ctest (label "fuzz"): SECONDS (default 10) of fuzzing from the
# committed seed corpus CORPUS; new inputs and crash reproducers go to the build tree, never to
# the source tree. Longer runs: docs/reliability.md.
find_program(FERRY_CLANGXX_FUZZ NAMES clang++-14)

function(ferry_add_fuzzer)
  cmake_parse_arguments(F "" "NAME;CORPUS;DICT;SECONDS" "SOURCES;PKGS;LINK;DEPENDS" ${ARGN})
  if(NOT FERRY_BUILD_FUZZERS)
    return()
  endif()
  if(NOT FERRY_CLANGXX_FUZZ)
    message(STATUS "clang++-14 not found: ${F_NAME} not built")
    return()
  endif()
  set(flags "")
  set(libs "")
  foreach(pkg IN LISTS F_PKGS)
    string(MAKE_C_IDENTIFIER "FERRY_FUZZ_PKG_${pkg}" var)
    pkg_check_modules(${var} QUIET ${pkg})
    if(NOT ${var}_FOUND)
      message(STATUS "pkg-config ${pkg} not found: ${F_NAME} not built")
      return()
    endif()
    list(APPEND flags ${${var}_CFLAGS})
    foreach(lib IN LISTS ${var}_LINK_LIBRARIES)
      if(IS_ABSOLUTE "${lib}")
        list(APPEND libs "${lib}")
      else()
        list(APPEND libs "-l${lib}")
      endif()
    endforeach()
  endforeach()
  set(bin ${CMAKE_BINARY_DIR}/bin/${F_NAME})
  add_custom_command(
    OUTPUT ${bin}
    COMMAND ${FERRY_CLANGXX_FUZZ} -std=c++20 -g -O1 -fsanitize=fuzzer,address,undefined
            -fno-sanitize-recover=undefined
            -DSPDLOG_COMPILED_LIB -DSPDLOG_FMT_EXTERNAL -DSPDLOG_SHARED_LIB -DFMT_SHARED
            -I${PROJECT_SOURCE_DIR}/include -I${PROJECT_SOURCE_DIR}/src
            -isystem ${CMAKE_BINARY_DIR}/proto/gen ${flags}
            ${F_SOURCES} -o ${bin} ${libs} ${F_LINK}
    DEPENDS ${F_SOURCES} ${F_DEPENDS}
    COMMENT "Building ${F_NAME} with clang++-14 and libFuzzer"
    VERBATIM)
  add_custom_target(${F_NAME} ALL DEPENDS ${bin})
  if(F_DEPENDS)
    add_dependencies(${F_NAME} ${F_DEPENDS})
  endif()
  if(FERRY_BUILD_TESTS)
    if(NOT F_SECONDS)
      set(F_SECONDS 10)
    endif()
    set(work ${CMAKE_CURRENT_BINARY_DIR}/fuzz/${F_NAME})
    set(dict "")
    if(F_DICT)
      set(dict "-dict=${F_DICT}")
    endif()
    add_test(NAME ${F_NAME}_smoke
      COMMAND sh -c "mkdir -p '${work}/corpus' && exec '${bin}' -max_total_time=${F_SECONDS} \
-rss_limit_mb=2048 -timeout=10 -print_final_stats=1 ${dict} -artifact_prefix='${work}/' \
'${work}/corpus' '${F_CORPUS}'")
    set_tests_properties(${F_NAME}_smoke PROPERTIES TIMEOUT 120 LABELS fuzz)
  endif()
endfunction()
