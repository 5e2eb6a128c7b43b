# libFuzzer targets (RELIABILITY.md A1-A3, A6, A7, B1, B3): the model-file loaders
# (fuzz_safetensors, fuzz_model_config) and the tokenizer (fuzz_tokenizer: encode/decode
# against two embedded tokenizers; fuzz_tokenizer_load: tokenizer.json + config loader) and
# the HTTP request validator (fuzz_completion_request, C20) and the sampler (fuzz_sampler:
# arbitrary logits with NaN/Inf and every sampling parameter, issue 15) and the KV pool's prefix
# cache (fuzz_kv_prefix: random request traffic, K/V exactness and accounting, issue 17) and the
# prefill/decode wire protocol (fuzz_pd_msg: frames from a hostile peer, issue 20) and the
# Jinja chat-template engine (fuzz_jinja: parse + render any template, issue 19) and the chat
# request path (fuzz_chat_request: srv_chat_parse, then eng_chat_render of the tiny template).
# Built only with -DKC_FUZZ=ON and clang:
#   cmake --preset fuzz && cmake --build --preset fuzz
#   ctest --test-dir build/fuzz -L fuzz                        (60 s each)
#   build/fuzz/tests/fuzz_tokenizer -max_total_time=300 tests/fuzz/corpus/fuzz_tokenizer  (5 min)
# Each target is seeded from tests/fuzz/corpus/<target>/ (read-only); new inputs go to
# <build>/fuzz-corpus/<target>/ and crash reproducers to <build>/fuzz-artifacts/.
if(KC_FUZZ)
  if(NOT CMAKE_C_COMPILER_ID MATCHES "Clang")
    message(FATAL_ERROR "KC_FUZZ needs clang (use the `fuzz` preset, clang-14)")
  endif()
  set(KC_FUZZ_SANITIZERS -fsanitize=address,undefined -fno-sanitize-recover=undefined
                         -fno-omit-frame-pointer)
  # Coverage feedback and sanitizers must reach the code under test, not only the harness:
  # instrument the libraries the targets link, and make their users link the runtimes.
  foreach(lib kc_common kc_tokenizer kc_engine kc_scheduler kc_server_core)
    target_compile_options(${lib} PRIVATE -fsanitize=fuzzer-no-link ${KC_FUZZ_SANITIZERS})
    target_link_options(${lib} INTERFACE -fsanitize=address,undefined)
  endforeach()
  file(MAKE_DIRECTORY ${CMAKE_BINARY_DIR}/fuzz-artifacts)

  # kc_add_fuzz_target(NAME MAX_LEN [LIBS...]): tests/fuzz/NAME.c with its .dict and seeds.
  function(kc_add_fuzz_target target max_len)
    add_executable(${target} fuzz/${target}.c)
    target_compile_options(${target} PRIVATE -fsanitize=fuzzer ${KC_FUZZ_SANITIZERS})
    target_link_options(${target} PRIVATE -fsanitize=fuzzer ${KC_FUZZ_SANITIZERS})
    target_link_libraries(${target} PRIVATE ${ARGN} kc_tokenizer kc_engine)
    set(work_corpus ${CMAKE_BINARY_DIR}/fuzz-corpus/${target})
    file(MAKE_DIRECTORY ${work_corpus})
    add_test(NAME ${target}
             COMMAND ${target} -max_total_time=60 -timeout=10 -rss_limit_mb=2048
                     -max_len=${max_len} -print_final_stats=1
                     -dict=${CMAKE_SOURCE_DIR}/tests/fuzz/${target}.dict
                     -artifact_prefix=${CMAKE_BINARY_DIR}/fuzz-artifacts/${target}-
                     ${work_corpus} ${CMAKE_SOURCE_DIR}/tests/fuzz/corpus/${target})
    set_tests_properties(${target} PROPERTIES LABELS fuzz TIMEOUT 180
                         ENVIRONMENT "ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1")
  endfunction()

  kc_add_fuzz_target(fuzz_safetensors 65536)
  kc_add_fuzz_target(fuzz_model_config 65536)
  kc_add_fuzz_target(fuzz_tokenizer 16384)
  kc_add_fuzz_target(fuzz_tokenizer_load 16384)
  kc_add_fuzz_target(fuzz_completion_request 65536 kc_server_core)
  kc_add_fuzz_target(fuzz_sampler 4096)
  kc_add_fuzz_target(fuzz_kv_prefix 4096)
  kc_add_fuzz_target(fuzz_pd_msg 65536 kc_scheduler)
  kc_add_fuzz_target(fuzz_jinja 8192)
  # POST /v1/chat/completions up to the prompt: srv_chat_parse, then eng_chat_render (issue 19).
  kc_add_fuzz_target(fuzz_chat_request 65536 kc_server_core)
endif()
