# Disaggregated serving (issue 20; docs/disaggregated.md): the prefill/decode wire protocol.

# Every test here runs UCX: full stacks through UCX's frame-pointer-less libraries (so that the
# suppression can match), and the suppression of UCX's own process-lifetime allocations.
function(kc_pd_ucx_sanitizer_env test)
  set_property(TEST ${test} APPEND PROPERTY ENVIRONMENT
               "ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:fast_unwind_on_malloc=0"
               "LSAN_OPTIONS=suppressions=${CMAKE_SOURCE_DIR}/tests/lsan_ucx.supp")
endfunction()

kc_add_unit_test(test_scheduler_pd_msg SOURCES unit/test_scheduler_pd_msg.c LIBS kc_scheduler)
# The UCX transport on loopback: SUBMIT -> FIRST + a TinyLlama-sized prompt's K/V (f32 and
# bf16 on the wire) byte for byte, a peer of another model shape refused, a peer gone reported.
kc_add_unit_test(test_scheduler_pd_ucx SOURCES unit/test_scheduler_pd_ucx.c LIBS kc_scheduler
                 TIMEOUT 120)
kc_pd_ucx_sanitizer_env(test_scheduler_pd_ucx)

# Stream vs tagged messages for a TinyLlama-sized prompt's K/V on loopback (the transport's
# wire choice, pd_ucx.c): prints the best of 8 each; asserts nothing about speed. Compare
# transports with e.g. `UCX_TLS=tcp ctest --preset ci -L bench -R pd_wire -V`.
kc_add_unit_test(bench_pd_wire SOURCES unit/bench_pd_wire.c LIBS PkgConfig::UCX Threads::Threads
                 LABELS bench TIMEOUT 120)

# Stages C-E over real HTTP on loopback: --role prefill + --role decode vs --role all with the
# embedded pair (f32): greedy text and logprobs bit for bit in full and predict mode, streaming,
# transfer metrics, KV back to 0 on both hosts, kill -9 of the prefill host -> a clean 503.
if(TARGET kvcast)
  kc_add_script_test(test_pd_loopback integration/test_pd_loopback.py TIMEOUT 180)
  kc_pd_ucx_sanitizer_env(test_pd_loopback)
endif()

# The same across two network namespaces (veth pairs + a bridge, 198.18.0.0/15), built and
# removed by the test (needs root + iproute2, else skipped): the smoke (bit-identical outputs,
# KV back to 0) and, labelled slow, the TTFT comparison and a kill -9 of the prefill host under
# load (`ctest --preset ci -L slow -R pd_netns -V`).
if(TARGET kvcast)
  foreach(variant smoke full)
    set(name test_pd_netns_${variant})
    add_test(NAME ${name} COMMAND /usr/bin/python3 ${CMAKE_SOURCE_DIR}/tests/integration/test_pd_netns.py
                                  $<TARGET_FILE:kvcast> --${variant}
             WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
    set_tests_properties(${name} PROPERTIES LABELS slow TIMEOUT 600 SKIP_RETURN_CODE 77 RUN_SERIAL TRUE)
    kc_pd_ucx_sanitizer_env(${name})
  endforeach()
endif()

# Item 3's first fault over real HTTP: a prefill host killed (-9) with a request in flight; the
# decode host retries it once on the other prefill host (200, same greedy text), counts the
# retry and the peer's error, and its KV returns to 0.
if(TARGET kvcast)
  kc_add_script_test(test_pd_retry integration/test_pd_retry.py TIMEOUT 180)
  kc_pd_ucx_sanitizer_env(test_pd_retry)
endif()

# Each role on its own over loopback with UCX_TLS=tcp: a prefill host refuses client
# completions (421); a decode host loads the base model only and is not ready (/ready 503)
# without a prefill peer; kill -9 of a decode host with requests in flight at its prefill host
# (everything freed there, a new decode host served); both hosts SIGTERMed at the same moment
# exit 0 with no sanitizer report.
if(TARGET kvcast)
  kc_add_script_test(test_pd_hosts integration/test_pd_hosts.py TIMEOUT 180)
  kc_pd_ucx_sanitizer_env(test_pd_hosts)
endif()

# A prefill host runs no decode worker (thread names), and its pd receive path ends the
# cancelled requests the decode worker used to reap: a client cancel of a queued request, and a
# decode host killed (-9) with requests queued and prefilling; KV and in-flight back to 0.
if(TARGET kvcast)
  kc_add_script_test(test_pd_prefill_host integration/test_pd_prefill_host.py TIMEOUT 180)
  kc_pd_ucx_sanitizer_env(test_pd_prefill_host)
endif()

# --prefill-peers names that really change: three namespaces (prefill hosts A and B, the decode
# host) on a bridge (198.18.0.0/15), the decode namespace's /etc/hosts (ip netns exec
# bind-mounts /etc/netns/NS/hosts) rewritten to move prefill-pool.test A -> B -> A+B ->
# unresolvable -> B, with --pd-resolve-ms 200: new requests follow the name, a dropped address
# fails no request, a DNS outage keeps the peers, greedy output equals --role all. Needs root +
# iproute2, else skipped; ~40 s under ASan (4 servers start), so labelled slow like the netns
# tests (`ctest --preset ci -L slow -R pd_dns -V`).
if(TARGET kvcast)
  add_test(NAME test_pd_dns COMMAND /usr/bin/python3 ${CMAKE_SOURCE_DIR}/tests/integration/test_pd_dns.py
                                    $<TARGET_FILE:kvcast>
           WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
  set_tests_properties(test_pd_dns PROPERTIES LABELS slow TIMEOUT 300 SKIP_RETURN_CODE 77 RUN_SERIAL TRUE)
  kc_pd_ucx_sanitizer_env(test_pd_dns)
endif()

# Shutdown with K/V transfers in flight (a prefill host once crashed in ucp_worker_destroy):
# prefill and decode hosts on loopback stopped in five orders (SIGTERM of either or both,
# kill -9 of the decode host then SIGTERM of the prefill host, a second decode host
# reconnecting every 100 ms), over UCX_TLS=tcp and UCX's default transports; every SIGTERMed
# host exits 0 with a clean log. Labelled slow; 10 rounds over the five orders. Ways 0 and 4 (a
# decode host SIGTERMed after its prefill host is gone, while its clients' requests fail
# fast) used to abort the decode host in libmicrohttpd about once in 25 rounds ("MHD_stop_daemon()
# called while we have suspended connections": a request accepted while serving suspended in
# the daemon's last run; server/completions.c prep_start now refuses it), 0 of 30 since. The
# soak: `tests/integration/test_pd_shutdown.py build/ci/tools/kvcast --iterations 50`.
if(TARGET kvcast)
  add_test(NAME test_pd_shutdown
           COMMAND /usr/bin/python3 ${CMAKE_SOURCE_DIR}/tests/integration/test_pd_shutdown.py
                   $<TARGET_FILE:kvcast> --iterations 10
           WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
  set_tests_properties(test_pd_shutdown PROPERTIES LABELS slow TIMEOUT 600)
  kc_pd_ucx_sanitizer_env(test_pd_shutdown)
endif()
