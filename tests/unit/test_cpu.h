/*
 * test_cpu.h — what the CPU says it has, for unit tests whose expectations depend on it
 * (weight-type defaults, oneDNN paths). Header-only; include after cmocka.h.
 */
#ifndef KC_TEST_CPU_H
#define KC_TEST_CPU_H

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

/* Whether /proc/cpuinfo's first flags line holds one of the words (NULL-terminated). */
static inline bool cpu_has_any(const char *const *words) {
    FILE *f = fopen("/proc/cpuinfo", "r");
    assert_non_null(f);
    char line[8192];
    bool found = false;
    while (!found && fgets(line, sizeof(line), f) != NULL) {
        if (strncmp(line, "flags", 5) != 0) {
            continue;
        }
        for (const char *tok = strtok(line, " \t\n:"); tok != NULL; tok = strtok(NULL, " \t\n")) {
            for (int i = 0; words[i] != NULL; i++) {
                found = found || strcmp(tok, words[i]) == 0;
            }
        }
        break;
    }
    fclose(f);
    return found;
}

#endif /* KC_TEST_CPU_H */
