# Tests of config/ and server/: validator/config/metrics units, and integration tests that
# start the real `kvcast serve --port 0 --host 127.0.0.1` and speak HTTP to it.
kc_add_unit_test(test_config_settings SOURCES unit/test_config_settings.c LIBS kc_config)
kc_add_unit_test(test_server_request SOURCES unit/test_server_request.c
                 LIBS kc_server_core PkgConfig::JANSSON)
kc_add_unit_test(test_server_util SOURCES unit/test_server_util.c LIBS kc_server_core)

# Integration: the real `kvcast serve` over HTTP (bounded: every wait has a timeout).
find_package(Threads REQUIRED)
if(TARGET kvcast AND TARGET kc_server)
  kc_add_unit_test(test_server_http SOURCES integration/test_server_http.c
                   LIBS PkgConfig::JANSSON Threads::Threads LABELS integration TIMEOUT 240)
  add_dependencies(test_server_http kvcast)
endif()

# Conformance: the official OpenAI Node SDK (pinned in tests/conformance/openai/package-lock.json)
# against the real server; run.sh installs the pinned packages on first use and fails (never
# skips) without node/npm.
if(TARGET kvcast AND TARGET kc_server)
  add_test(NAME test_server_openai_conformance
           COMMAND bash ${CMAKE_SOURCE_DIR}/tests/conformance/openai/run.sh $<TARGET_FILE:kvcast>)
  set_tests_properties(test_server_openai_conformance PROPERTIES LABELS integration TIMEOUT 300)
endif()

# Request handling over HTTP on the shipped tiny bundle: tokenization off the loop thread
# (/health p99 under 4 MiB prompts), early context refusal, abandoned/shutdown tokenize jobs,
# the timings relations in every prefill mode, and the vLLM extra fields (issue 15).
if(TARGET kvcast AND TARGET kc_server)
  add_test(NAME test_server_request_http
           COMMAND /usr/bin/python3 ${CMAKE_SOURCE_DIR}/tests/integration/test_server_request_http.py
                   $<TARGET_FILE:kvcast>
           WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
  set_tests_properties(test_server_request_http PROPERTIES LABELS integration TIMEOUT 180)
endif()
