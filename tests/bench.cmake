# `kvcast bench serve` against the real `kvcast serve` (golden model, identity predictor): the
# summary and JSON fields exist and are sane; no speed is asserted. Bounded (< 30 s).
if(TARGET kvcast AND TARGET kc_server)
  add_test(NAME test_bench_serve
           COMMAND bash ${CMAKE_SOURCE_DIR}/tests/integration/test_bench_serve.sh
                   $<TARGET_FILE:kvcast>
           WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
  set_tests_properties(test_bench_serve PROPERTIES LABELS integration TIMEOUT 60)
endif()

# Synthetic dataset seeding: two seeds share no prompt, warm-up prompts are not measured ones
# (--dump-prompts, no server; < 2 s).
if(TARGET kvcast)
  add_test(NAME test_bench_seeds
           COMMAND bash ${CMAKE_SOURCE_DIR}/tests/integration/test_bench_seeds.sh
                   $<TARGET_FILE:kvcast>
           WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
  set_tests_properties(test_bench_seeds PROPERTIES LABELS integration TIMEOUT 60)
endif()

# tools/bench/hf_to_gguf.py (the llama.cpp peer's converter): GGUF read back, metadata, tensors
# and rope equivalence of the permuted Q/K (numpy only, no llama.cpp; < 5 s).
add_test(NAME test_hf_to_gguf
         COMMAND /usr/bin/python3 ${CMAKE_SOURCE_DIR}/tests/integration/test_hf_to_gguf.py
         WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
set_tests_properties(test_hf_to_gguf PROPERTIES LABELS integration TIMEOUT 60)
