# Soak smoke (docs/reliability.md): `tools/soak.sh --smoke` against this build's kvcast —
# ~45 s of mixed load (stream/non-stream, cancels, trickling and idle clients, invalid and
# oversized requests), then the soak's checks (gauges back to 0, counters reconcile, no crash
# or sanitizer report). Labelled `slow`, so the default test presets skip it; run it with
#   ctest --test-dir build/ci -L slow -R soak_smoke --output-on-failure
if(TARGET kvcast)
  add_test(NAME soak_smoke
           COMMAND bash ${CMAKE_SOURCE_DIR}/tools/soak.sh --smoke --bin $<TARGET_FILE:kvcast>
                   --out ${CMAKE_BINARY_DIR}/soak-smoke
           WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
  set_tests_properties(soak_smoke PROPERTIES LABELS slow TIMEOUT 600 RUN_SERIAL TRUE)
endif()

# The soak's pass/fail logic on synthetic data (RSS growth, counter reconciliation, /metrics
# parsing): fast, no server, part of the default suite.
add_test(NAME test_soak_checks COMMAND /usr/bin/python3 ${CMAKE_SOURCE_DIR}/tools/soak/test_checks.py)
set_tests_properties(test_soak_checks PROPERTIES LABELS unit TIMEOUT 60)
