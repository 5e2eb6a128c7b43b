# The kvcast command line (tools/cli): one parser for every subcommand (--help, --x=v, unknown
# options, bad values), --version, JSON built with jansson, `kvcast eval`'s warnings and its
# default held-out data; and the README's quality figure reproduced from models/tiny/heldout.ids.
if(TARGET kvcast)
  add_test(NAME test_cli_args
           COMMAND bash ${CMAKE_SOURCE_DIR}/tests/integration/test_cli_args.sh
                   $<TARGET_FILE:kvcast>
           WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
  set_tests_properties(test_cli_args PROPERTIES LABELS integration TIMEOUT 300)
  add_test(NAME test_eval_heldout_readme_figure
           COMMAND bash ${CMAKE_SOURCE_DIR}/tests/integration/test_eval_heldout.sh
                   $<TARGET_FILE:kvcast>
           WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
  set_tests_properties(test_eval_heldout_readme_figure PROPERTIES LABELS integration TIMEOUT 400)
endif()
kc_add_unit_test(test_tools_cli_args
                 SOURCES unit/test_tools_cli_args.c ${CMAKE_SOURCE_DIR}/tools/cli/args.c
                         ${CMAKE_SOURCE_DIR}/tools/cli/json_out.c
                 LIBS kc_common PkgConfig::JANSSON m)
