# Tests of deploy/: the container image built and run for real (needs
# deploy/install-container-deps.sh: podman, runc, debootstrap; labelled `slow`, so the default
# test presets skip it; run it with `ctest -L slow`), and `promtool check metrics` on live
# /metrics scrapes in both metric spellings (promtool comes from deploy/install-deps.sh; part
# of the default suite).
add_test(NAME test_deploy_container
         COMMAND bash ${CMAKE_SOURCE_DIR}/deploy/test-container.sh)
set_tests_properties(test_deploy_container PROPERTIES LABELS slow TIMEOUT 1800 RUN_SERIAL TRUE)

if(TARGET kvcast)
  add_test(NAME test_deploy_promtool_metrics
           COMMAND bash ${CMAKE_SOURCE_DIR}/deploy/check-metrics.sh $<TARGET_FILE:kvcast>)
  set_tests_properties(test_deploy_promtool_metrics PROPERTIES LABELS integration TIMEOUT 120)
endif()

# The Kubernetes manifests (deploy/k8s/, deploy/k8s/pd/) and the compose files, checked without
# kubectl or Docker (tests/deploy/validate.mjs): API schemas from the pinned kubernetes-models
# with unknown fields refused, the Compose Specification schema, every kvcast setting through
# kvcast's own parser, and the cross-references (peers -> headless Service -> pd port, Service
# selectors -> pod roles, probe ports and paths), then a self-test that breaks them one way at
# a time. Needs node + npm; run.sh installs the pinned packages on first use.
if(TARGET kvcast)
  add_test(NAME test_deploy_manifests
           COMMAND bash ${CMAKE_SOURCE_DIR}/tests/deploy/run.sh $<TARGET_FILE:kvcast>)
  set_tests_properties(test_deploy_manifests PROPERTIES LABELS integration TIMEOUT 300)
endif()
