# Disaggregated serving (issue 20; docs/disaggregated.md): the prefill/decode wire protocol.
kc_add_unit_test(test_scheduler_pd_msg SOURCES unit/test_scheduler_pd_msg.c LIBS kc_scheduler)
