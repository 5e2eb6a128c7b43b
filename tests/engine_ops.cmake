# Compute kernels (engine/ops.c, engine/ops_dnnl.c): every fast kernel against its _ref twin.
kc_add_unit_test(test_engine_ops SOURCES unit/test_engine_ops.c LIBS kc_engine)
# int8 weights (ops_dnnl.c invariant 7): the s8 matmul against an exact emulation.
kc_add_unit_test(test_engine_int8 SOURCES unit/test_engine_int8.c LIBS kc_engine)
# The other kind of machine (issue 18): oneDNN capped at AVX-512 without VNNI, bf16 or AMX
# (Skylake-SP class), so int8 runs on 7-bit weights (ops_dnnl.c invariant 9) and bf16 on
# oneDNN's emulation. The same binaries, the same assertions (bounds that depend on the
# machine read eng_int8_weight_levels()).
foreach(t test_engine_int8 test_engine_model test_engine_bf16_prefill test_engine_kvp)
  add_test(NAME ${t}_avx512_core COMMAND ${t} WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
  set_tests_properties(${t}_avx512_core PROPERTIES LABELS unit TIMEOUT 300
                       ENVIRONMENT "ONEDNN_MAX_CPU_ISA=AVX512_CORE;KC_SOURCE_DIR=${CMAKE_SOURCE_DIR};KC_BUILD_DIR=${CMAKE_BINARY_DIR}")
endforeach()
