kc_add_unit_test(test_scheduler_request SOURCES unit/test_scheduler_request.c LIBS kc_scheduler)
kc_add_unit_test(test_scheduler_policy SOURCES unit/test_scheduler_policy.c LIBS kc_scheduler)
kc_add_unit_test(test_scheduler_run SOURCES unit/test_scheduler_run.c LIBS kc_scheduler)
kc_add_unit_test(test_scheduler_alloc SOURCES unit/test_scheduler_alloc.c LIBS kc_scheduler)
target_link_options(test_scheduler_alloc PRIVATE -Wl,--wrap=malloc -Wl,--wrap=calloc
                    -Wl,--wrap=realloc -Wl,--wrap=aligned_alloc)

# Issue 7's bars over real HTTP: 16 concurrent clients, metrics reconcile, auto's routing.
add_test(NAME test_scheduler_load
         COMMAND bash ${CMAKE_SOURCE_DIR}/tests/integration/test_scheduler_load.sh $<TARGET_FILE:kvcast>
         WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
set_tests_properties(test_scheduler_load PROPERTIES LABELS integration TIMEOUT 300)

# Issue 16 item 3 over real HTTP: auto requests that no prefill mode can serve within the TTFT
# target get 503 + Retry-After at once and are counted in /metrics; explicit modes never are.
add_test(NAME test_server_shed
         COMMAND /usr/bin/python3 ${CMAKE_SOURCE_DIR}/tests/integration/test_server_shed.py
                 $<TARGET_FILE:kvcast>
         WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
set_tests_properties(test_server_shed PROPERTIES LABELS integration TIMEOUT 180)
