kc_add_unit_test(test_scheduler_request SOURCES unit/test_scheduler_request.c LIBS kc_scheduler)
kc_add_unit_test(test_scheduler_policy SOURCES unit/test_scheduler_policy.c LIBS kc_scheduler)
kc_add_unit_test(test_scheduler_run SOURCES unit/test_scheduler_run.c LIBS kc_scheduler)
kc_add_unit_test(test_scheduler_alloc SOURCES unit/test_scheduler_alloc.c LIBS kc_scheduler)
target_link_options(test_scheduler_alloc PRIVATE -Wl,--wrap=malloc -Wl,--wrap=calloc
                    -Wl,--wrap=realloc -Wl,--wrap=aligned_alloc)
