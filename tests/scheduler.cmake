kc_add_unit_test(test_scheduler_request SOURCES unit/test_scheduler_request.c LIBS kc_scheduler)
kc_add_unit_test(test_scheduler_policy SOURCES unit/test_scheduler_policy.c LIBS kc_scheduler)
kc_add_unit_test(test_scheduler_run SOURCES unit/test_scheduler_run.c unit/sched_harness.c
                 LIBS kc_scheduler)
kc_add_unit_test(test_scheduler_prefix SOURCES unit/test_scheduler_prefix.c unit/sched_harness.c
                 LIBS kc_scheduler)
kc_add_unit_test(test_scheduler_alloc SOURCES unit/test_scheduler_alloc.c LIBS kc_scheduler)
target_link_options(test_scheduler_alloc PRIVATE -Wl,--wrap=malloc -Wl,--wrap=calloc
                    -Wl,--wrap=realloc -Wl,--wrap=aligned_alloc)

# Issue 7's bars over real HTTP: 16 concurrent clients, metrics reconcile, auto's routing.
kc_add_script_test(test_scheduler_load integration/test_scheduler_load.sh TIMEOUT 300)

# Issue 16 item 3 over real HTTP: auto requests that no prefill mode can serve within the TTFT
# target get 503 + Retry-After at once and are counted in /metrics; explicit modes never are.
kc_add_script_test(test_server_shed integration/test_server_shed.py TIMEOUT 180)

# Issue 16 item 2: elastic teams (the plan as a pure function, the machine defaults) and, over
# real HTTP, a lone prefill on every core, a cpuset honoured, explicit thread flags honoured.
kc_add_unit_test(test_scheduler_teams SOURCES unit/test_scheduler_teams.c LIBS kc_scheduler)
if(TARGET kvcast)
  kc_add_script_test(test_server_threads integration/test_server_threads.py TIMEOUT 120)
endif()

# Issue 17 over real HTTP: a 1,000-token shared prefix cuts TTFT (cached_tokens reported), a
# load over shared system prompts hits the cache, refinements are counted, blocks reconcile.
kc_add_script_test(test_server_prefix_cache integration/test_server_prefix_cache.py TIMEOUT 240)
