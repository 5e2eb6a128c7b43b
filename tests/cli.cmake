# The kvcast command line (tools/cli): one parser for every subcommand (--help, --x=v, unknown
# options, bad values), --version, JSON built with jansson, `kvcast eval`'s warnings and its
# default held-out data; and the README's quality figure reproduced from models/tiny/heldout.ids.
if(TARGET kvcast)
  kc_add_script_test(test_cli_args integration/test_cli_args.sh TIMEOUT 300)
  kc_add_script_test(test_eval_heldout_readme_figure integration/test_eval_heldout.sh TIMEOUT 400)
  kc_add_script_test(test_cli_dtypes integration/test_cli_dtypes.sh TIMEOUT 300)
  # `kvcast chat-template`: template sources, context, --ids, errors, against python3-jinja2.
  kc_add_script_test(test_cli_chat_template integration/test_cli_chat_template.py TIMEOUT 120)
  # A CPU without AVX-512 (oneDNN capped at AVX2): default decode weights fall back to f32.
  kc_add_script_test(test_serve_no_avx512 integration/test_serve_no_avx512.sh TIMEOUT 300)
endif()
kc_add_unit_test(test_tools_cli_args
                 SOURCES unit/test_tools_cli_args.c ${CMAKE_SOURCE_DIR}/tools/cli/args.c
                         ${CMAKE_SOURCE_DIR}/tools/cli/json_out.c
                 LIBS kc_common PkgConfig::JANSSON m)
