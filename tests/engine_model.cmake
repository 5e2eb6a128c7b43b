kc_add_unit_test(test_engine_model SOURCES unit/test_engine_model.c LIBS kc_engine kc_tokenizer)
kc_add_unit_test(test_engine_kv_cache SOURCES unit/test_engine_kv_cache.c LIBS kc_engine)
kc_add_unit_test(test_engine_prefix_cache SOURCES unit/test_engine_prefix_cache.c LIBS kc_engine)
kc_add_unit_test(test_engine_sampler SOURCES unit/test_engine_sampler.c LIBS kc_engine)
add_test(NAME test_cli_generate
         COMMAND bash ${CMAKE_SOURCE_DIR}/tests/integration/test_cli_generate.sh $<TARGET_FILE:kvcast>)
set_tests_properties(test_cli_generate PROPERTIES LABELS integration TIMEOUT 120)
add_test(NAME test_models_tiny
         COMMAND bash ${CMAKE_SOURCE_DIR}/tests/integration/test_models_tiny.sh $<TARGET_FILE:kvcast>)
set_tests_properties(test_models_tiny PROPERTIES LABELS integration TIMEOUT 300)
# `kvcast bench gemv` runs end to end on a small configuration and prints one row per round
# with six positive rates (packed, prefill layout, which may be "-" where oneDNN refuses it,
# plain, triad, read, read+prefetch).
add_test(NAME test_cli_bench_gemv
         COMMAND $<TARGET_FILE:kvcast> bench gemv --config kvcast-base --rounds 2 --threads 1)
set_tests_properties(test_cli_bench_gemv PROPERTIES LABELS integration TIMEOUT 120
                     PASS_REGULAR_EXPRESSION "\n +1 +[0-9.]*[1-9][0-9.]* +([0-9.]*[1-9][0-9.]*|-) +[0-9.]*[1-9][0-9.]* +[0-9.]*[1-9][0-9.]* +[0-9.]*[1-9][0-9.]* +[0-9.]*[1-9][0-9.]*\n")
kc_add_unit_test(test_engine_kv_bf16 SOURCES unit/test_engine_kv_bf16.c LIBS kc_engine)
# --kv-dtype bf16 over real HTTP: twice the base KV blocks for the same budget, greedy full and
# predict completions beside an f32 server, a bad value refused at start-up.
if(TARGET kvcast AND TARGET kc_server)
  kc_add_script_test(test_server_kv_bf16 integration/test_server_kv_bf16.py TIMEOUT 180)
endif()
