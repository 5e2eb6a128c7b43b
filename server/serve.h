/*
 * serve.h — the server module's public entry point: `kvcast serve`.
 *
 * Place in the data flow: tools/cli/cmd_serve.c calls it; it owns the process from there
 * (settings, models, scheduler, HTTP loop, signals) and returns the exit code.
 */
#ifndef SRV_SERVE_H
#define SRV_SERVE_H

/* Runs `kvcast serve` with argv[1..] as options (see `kvcast serve --help`). Returns 0 after
 * a clean shutdown (SIGTERM/SIGINT), 2 for bad settings, 1 when loading or listening fails. */
int srv_serve_main(int argc, char **argv);

#endif /* SRV_SERVE_H */
