# The bf16 prefill (engine/model.c invariant 5): bf16 activations into the GEMMs and attention
# with bf16 products, against the f32 kernels and the f32 path within measured bounds.
kc_add_unit_test(test_engine_bf16_prefill SOURCES unit/test_engine_bf16_prefill.c LIBS kc_engine)
