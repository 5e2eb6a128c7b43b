# Jinja chat-template engine (tokenizer/jinja*.c): unit tests, and render equivalence with
# python3-jinja2 used the way transformers uses it, on real chat templates (from pinned npm
# packages; node + npm needed, the test fails, never skips, when they or python3-jinja2 are
# missing) and the feature templates of tests/conformance/chat_template/templates/.
find_package(Threads REQUIRED)
kc_add_unit_test(test_jinja SOURCES unit/test_jinja.c LIBS kc_tokenizer Threads::Threads)

add_executable(jinja_render conformance/chat_template/render.c)
target_link_libraries(jinja_render PRIVATE kc_tokenizer PkgConfig::JANSSON)
add_test(NAME test_jinja_conformance
         COMMAND bash ${CMAKE_SOURCE_DIR}/tests/conformance/chat_template/run.sh
                 $<TARGET_FILE:jinja_render>)
set_tests_properties(test_jinja_conformance PROPERTIES LABELS integration TIMEOUT 300)
