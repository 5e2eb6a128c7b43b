# libFuzzer targets for the tokenizer (RELIABILITY.md A7, B1, B3): fuzz_tokenizer (encode and
# decode against two embedded tokenizers) and fuzz_tokenizer_load (tokenizer.json and
# tokenizer_config.json loader). Same conventions as tests/fuzz.cmake:
#   cmake --preset fuzz && cmake --build --preset fuzz --target fuzz_tokenizer fuzz_tokenizer_load
#   ctest --test-dir build/fuzz -L fuzz -R tokenizer        (60 s each)
#   build/fuzz/tests/fuzz_tokenizer -max_total_time=300 tests/fuzz/corpus/fuzz_tokenizer  (5 min)
if(KC_FUZZ)
  if(NOT CMAKE_C_COMPILER_ID MATCHES "Clang")
    message(FATAL_ERROR "KC_FUZZ needs clang (use the `fuzz` preset, clang-14)")
  endif()
  set(KC_TOK_FUZZ_SANITIZERS -fsanitize=address,undefined -fno-sanitize-recover=undefined
                             -fno-omit-frame-pointer)
  # tests/fuzz.cmake instruments kc_common and kc_engine; do it here only if it has not.
  get_target_property(kc_engine_opts kc_engine COMPILE_OPTIONS)
  if(NOT "${kc_engine_opts}" MATCHES "fuzzer-no-link")
    foreach(lib kc_common kc_engine)
      target_compile_options(${lib} PRIVATE -fsanitize=fuzzer-no-link ${KC_TOK_FUZZ_SANITIZERS})
      target_link_options(${lib} INTERFACE -fsanitize=address,undefined)
    endforeach()
  endif()

  file(MAKE_DIRECTORY ${CMAKE_BINARY_DIR}/fuzz-artifacts)
  foreach(target fuzz_tokenizer fuzz_tokenizer_load)
    add_executable(${target} fuzz/${target}.c)
    target_compile_options(${target} PRIVATE -fsanitize=fuzzer ${KC_TOK_FUZZ_SANITIZERS})
    target_link_options(${target} PRIVATE -fsanitize=fuzzer ${KC_TOK_FUZZ_SANITIZERS})
    target_link_libraries(${target} PRIVATE kc_engine PkgConfig::PCRE2)
    set(work_corpus ${CMAKE_BINARY_DIR}/fuzz-corpus/${target})
    file(MAKE_DIRECTORY ${work_corpus})
    add_test(NAME ${target}
             COMMAND ${target} -max_total_time=60 -timeout=10 -rss_limit_mb=2048
                     -max_len=16384 -print_final_stats=1
                     -dict=${CMAKE_SOURCE_DIR}/tests/fuzz/${target}.dict
                     -artifact_prefix=${CMAKE_BINARY_DIR}/fuzz-artifacts/${target}-
                     ${work_corpus} ${CMAKE_SOURCE_DIR}/tests/fuzz/corpus/${target})
    set_tests_properties(${target} PROPERTIES LABELS fuzz TIMEOUT 180
                         ENVIRONMENT "ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1")
  endforeach()
endif()
