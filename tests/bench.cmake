# `kvcast bench serve` against the real `kvcast serve` (golden model, identity predictor): the
# summary and JSON fields exist and are sane; no speed is asserted. Bounded (< 30 s).
if(TARGET kvcast AND TARGET kc_server)
  kc_add_script_test(test_bench_serve integration/test_bench_serve.sh TIMEOUT 60)
endif()

# Synthetic dataset seeding: two seeds share no prompt, warm-up prompts are not measured ones
# (--dump-prompts, no server; < 2 s).
if(TARGET kvcast)
  kc_add_script_test(test_bench_seeds integration/test_bench_seeds.sh TIMEOUT 60)
endif()

# tools/bench/hf_to_gguf.py (the llama.cpp peer's converter): GGUF read back, metadata, tensors
# and rope equivalence of the permuted Q/K (numpy only, no llama.cpp; < 5 s).
kc_add_script_test(test_hf_to_gguf integration/test_hf_to_gguf.py TIMEOUT 60 NO_KVCAST)

# hf_to_gguf.py --type q8_0|q4_0: the quantizers byte for byte against a scalar port of ggml's
# reference, the dequantized round trip, a converted model read back (numpy only; < 5 s).
kc_add_script_test(test_gguf_quant integration/test_gguf_quant.py TIMEOUT 60 NO_KVCAST)
