# Tests of config/ and server/: validator/config/metrics units, and integration tests that
# start the real `kvcast serve --port 0 --host 127.0.0.1` and speak HTTP to it.
kc_add_unit_test(test_config_settings SOURCES unit/test_config_settings.c LIBS kc_config)
kc_add_unit_test(test_server_request SOURCES unit/test_server_request.c
                 LIBS kc_server_core PkgConfig::JANSSON)
kc_add_unit_test(test_server_util SOURCES unit/test_server_util.c LIBS kc_server_core)
kc_add_unit_test(test_server_chat_request SOURCES unit/test_server_chat_request.c
                 LIBS kc_server_core)
# common/kc.c's log formats (--log-format text|json), which the server's access log uses.
kc_add_unit_test(test_common_log SOURCES unit/test_common_log.c LIBS kc_common PkgConfig::JANSSON)

# Integration: the real `kvcast serve` over HTTP (bounded: every wait has a timeout).
find_package(Threads REQUIRED)
if(TARGET kvcast AND TARGET kc_server)
  kc_add_unit_test(test_server_http SOURCES integration/test_server_http.c
                   LIBS PkgConfig::JANSSON Threads::Threads LABELS integration TIMEOUT 240)
  add_dependencies(test_server_http kvcast)
  # Slow/idle/half-closed clients, framing, per-IP limit, metrics auth, CORS, request ids and
  # JSON logs, over raw sockets from many 127.x source addresses (about 30 s).
  kc_add_script_test(test_server_slow_clients integration/test_server_slow_clients.py TIMEOUT 180)
  # Half-closed clients (shutdown(SHUT_WR) after the request) under load get whole answers;
  # clients that really went away (FIN, RST, half-close then close) are cancelled (~10 s).
  kc_add_script_test(test_server_half_close integration/test_server_half_close.py TIMEOUT 120)
endif()

# Logprobs, seeds and non-finite logits (issue 15 items 1, 12, 13): the real server, a model
# with NaN logits, and `kvcast eval` as the reference for prompt NLL.
if(TARGET kvcast AND TARGET kc_server)
  kc_add_script_test(test_server_logprobs integration/test_server_logprobs.py TIMEOUT 180)
endif()

# POST /v1/chat/completions on the embedded tiny pair (issue 19): shapes, streaming order, usage,
# n > 1, chat logprobs, greedy equality with /v1/completions on the rendered ids in predict and
# full mode, and the 400 rows (tools, bad messages, a raising template, no template) (~30 s).
if(TARGET kvcast AND TARGET kc_server)
  kc_add_script_test(test_server_chat integration/test_server_chat.py TIMEOUT 240)
endif()

# Conformance: the official OpenAI Node SDK (pinned in tests/conformance/openai/package-lock.json)
# against the real server; run.sh installs the pinned packages on first use and fails (never
# skips) without node/npm.
if(TARGET kvcast AND TARGET kc_server)
  add_test(NAME test_server_openai_conformance
           COMMAND bash ${CMAKE_SOURCE_DIR}/tests/conformance/openai/run.sh $<TARGET_FILE:kvcast>)
  set_tests_properties(test_server_openai_conformance PROPERTIES LABELS integration TIMEOUT 300)
endif()

# Start-up: bind before loading (busy port, /health "loading", SIGTERM while loading) and the
# model files that must be refused at start-up (unused tensors, predictor misfit, tokenizer).
if(TARGET kvcast)
  kc_add_script_test(test_server_startup integration/test_server_startup.sh TIMEOUT 120)
endif()

# Request handling over HTTP on the shipped tiny bundle: tokenization off the loop thread
# (/health p99 under 4 MiB prompts), early context refusal, abandoned/shutdown tokenize jobs,
# the timings relations in every prefill mode, and the vLLM extra fields (issue 15).
if(TARGET kvcast AND TARGET kc_server)
  kc_add_script_test(test_server_request_http integration/test_server_request_http.py TIMEOUT 180)
endif()

# Refinement and the prefix cache over HTTP (issue 17, server side): the "refine" request field,
# usage.prompt_tokens_details.cached_tokens, the timings fields, the /metrics families, and
# --no-enable-prefix-caching / --no-refine (~5 s).
if(TARGET kvcast AND TARGET kc_server)
  kc_add_script_test(test_server_prefix_refine integration/test_server_prefix_refine.py TIMEOUT 120)
endif()
