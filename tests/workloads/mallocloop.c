/*
 * An allocator-bound loop for `cargo xtask bench alloc-trace`: on each stdin line "run <n>",
 * mallocs and frees 64 bytes n times and prints the seconds it took; exits at end of input.
 * Build: gcc -O2 -g mallocloop.c -o mallocloop
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

int main(void) {
    char line[64];
    printf("ready\n");
    fflush(stdout);
    while (fgets(line, sizeof line, stdin)) {
        long n;
        if (sscanf(line, "run %ld", &n) != 1 || n <= 0)
            return 2;
        double started = now();
        for (long i = 0; i < n; i++) {
            void *volatile p = malloc(64);
            free(p);
        }
        printf("%.9f\n", now() - started);
        fflush(stdout);
    }
    return 0;
}
