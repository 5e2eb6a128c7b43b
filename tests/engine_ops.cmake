# Compute kernels (engine/ops.c, engine/ops_dnnl.c): every fast kernel against its _ref twin.
kc_add_unit_test(test_engine_ops SOURCES unit/test_engine_ops.c LIBS kc_engine)
# int8 weights (ops_dnnl.c invariant 7): the s8 matmul against an exact emulation.
kc_add_unit_test(test_engine_int8 SOURCES unit/test_engine_int8.c LIBS kc_engine)
