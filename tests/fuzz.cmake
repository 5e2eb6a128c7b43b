# libFuzzer targets for the model-file loaders (RELIABILITY.md A1-A3, A6). Built only with
# -DKC_FUZZ=ON and clang: `cmake --preset fuzz && cmake --build --preset fuzz`, then
# `ctest --test-dir build/fuzz -L fuzz`. Each target runs 60 s seeded from
# tests/fuzz/corpus/<target>/ (read-only); new inputs go to <build>/fuzz-corpus/<target>/ and
# crash reproducers to <build>/fuzz-artifacts/.
if(KC_FUZZ)
  if(NOT CMAKE_C_COMPILER_ID MATCHES "Clang")
    message(FATAL_ERROR "KC_FUZZ needs clang (use the `fuzz` preset, clang-14)")
  endif()
  set(KC_FUZZ_SANITIZERS -fsanitize=address,undefined -fno-sanitize-recover=undefined
                         -fno-omit-frame-pointer)
  # Coverage feedback and sanitizers must reach the code under test, not only the harness:
  # instrument the libraries the targets link, and make their users link the runtimes.
  foreach(lib kc_common kc_engine)
    target_compile_options(${lib} PRIVATE -fsanitize=fuzzer-no-link ${KC_FUZZ_SANITIZERS})
    target_link_options(${lib} INTERFACE -fsanitize=address,undefined)
  endforeach()

  file(MAKE_DIRECTORY ${CMAKE_BINARY_DIR}/fuzz-artifacts)
  foreach(target fuzz_safetensors fuzz_model_config)
    add_executable(${target} fuzz/${target}.c)
    target_compile_options(${target} PRIVATE -fsanitize=fuzzer ${KC_FUZZ_SANITIZERS})
    target_link_options(${target} PRIVATE -fsanitize=fuzzer ${KC_FUZZ_SANITIZERS})
    target_link_libraries(${target} PRIVATE kc_engine)
    set(work_corpus ${CMAKE_BINARY_DIR}/fuzz-corpus/${target})
    file(MAKE_DIRECTORY ${work_corpus})
    add_test(NAME ${target}
             COMMAND ${target} -max_total_time=60 -timeout=10 -rss_limit_mb=2048
                     -max_len=65536 -print_final_stats=1
                     -dict=${CMAKE_SOURCE_DIR}/tests/fuzz/${target}.dict
                     -artifact_prefix=${CMAKE_BINARY_DIR}/fuzz-artifacts/${target}-
                     ${work_corpus} ${CMAKE_SOURCE_DIR}/tests/fuzz/corpus/${target})
    set_tests_properties(${target} PROPERTIES LABELS fuzz TIMEOUT 180
                         ENVIRONMENT "ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1")
  endforeach()
endif()
