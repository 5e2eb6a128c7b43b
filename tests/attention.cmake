# Attention (engine/attention.c): the tiled and the one-row kernels against the _ref twin.
kc_add_unit_test(test_attention SOURCES unit/test_attention.c LIBS kc_engine)
