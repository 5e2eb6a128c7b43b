# Model-file loaders: safetensors (single, sharded, writer) and HF config.json.
kc_add_unit_test(test_engine_safetensors SOURCES unit/test_engine_safetensors.c LIBS kc_engine)
kc_add_unit_test(test_engine_model_config SOURCES unit/test_engine_model_config.c LIBS kc_engine)
