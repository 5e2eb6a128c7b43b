# Compute kernels (engine/ops.c, engine/ops_dnnl.c): every fast kernel against its _ref twin.
kc_add_unit_test(test_engine_ops SOURCES unit/test_engine_ops.c LIBS kc_engine)
