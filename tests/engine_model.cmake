kc_add_unit_test(test_engine_model SOURCES unit/test_engine_model.c LIBS kc_engine)
kc_add_unit_test(test_engine_kv_cache SOURCES unit/test_engine_kv_cache.c LIBS kc_engine)
kc_add_unit_test(test_engine_sampler SOURCES unit/test_engine_sampler.c LIBS kc_engine)
