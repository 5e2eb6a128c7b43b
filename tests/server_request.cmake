# Request path of issue 15 (items 4, 11, 15): the tokenizer's encode limit and concurrent
# encodes. The HTTP-level test (test_server_request_http) is registered in server.cmake.
find_package(Threads REQUIRED)
kc_add_unit_test(test_engine_tokenizer_max SOURCES unit/test_engine_tokenizer_max.c
                 LIBS kc_tokenizer Threads::Threads)
