# The layering check itself (test_layering_includes, tests/CMakeLists.txt) must fail on a
# violation: plant one per rule in a scratch copy of the sources and expect each to be caught.
add_test(NAME test_layering_selftest
         COMMAND bash ${CMAKE_SOURCE_DIR}/tests/check_layering_selftest.sh ${CMAKE_SOURCE_DIR})
set_tests_properties(test_layering_selftest PROPERTIES LABELS unit TIMEOUT 180)
