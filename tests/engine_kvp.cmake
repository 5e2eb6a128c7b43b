# KV Prediction: predictor files and bundles, the prefill modes, closed-form calibration.
kc_add_unit_test(test_engine_kvp SOURCES unit/test_engine_kvp.c LIBS kc_engine)
