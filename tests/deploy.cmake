# Tests of deploy/: the container image built and run for real, and `promtool check metrics`
# on a live /metrics scrape. Both need deploy/install-container-deps.sh (podman, runc,
# debootstrap, prometheus's promtool — too big for install-deps.sh), so both are labelled
# `slow` and the default test presets skip them; run them with `ctest -L slow`.
add_test(NAME test_deploy_container
         COMMAND bash ${CMAKE_SOURCE_DIR}/deploy/test-container.sh)
set_tests_properties(test_deploy_container PROPERTIES LABELS slow TIMEOUT 1800 RUN_SERIAL TRUE)

if(TARGET kvcast)
  add_test(NAME test_deploy_promtool_metrics
           COMMAND bash ${CMAKE_SOURCE_DIR}/deploy/check-metrics.sh $<TARGET_FILE:kvcast>)
  set_tests_properties(test_deploy_promtool_metrics PROPERTIES LABELS slow TIMEOUT 120)
endif()
