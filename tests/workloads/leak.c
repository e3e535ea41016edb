/*
 * A leak whose truth we know, beside a churn that is not one (memlens integration tests).
 *
 *   leak <MiB> <MiB per second>
 *
 * leak_slowly() mallocs 1 MiB at a time, fills it with memset (so the first touch of every page
 * happens inside glibc's frameless memset, as in real code) and never frees it. churn_fast(), on
 * its own thread, mallocs, fills and frees 4 MiB continuously. mallopt pins the mmap threshold so
 * that free() really returns the churn's memory. Prints "leaked <bytes>" when done, then waits
 * for "exit" (or end of input).
 * Build: gcc -O2 -g -fno-omit-frame-pointer -pthread leak.c -o leak
 */
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MIB (1024 * 1024)

static volatile int stop;

__attribute__((noinline)) static size_t leak_slowly(size_t mib, unsigned per_second) {
    size_t leaked = 0;
    for (size_t i = 0; i < mib; i++) {
        char *p = malloc(MIB);
        if (!p)
            break;
        memset(p, 0x5a, MIB);
        leaked += MIB;
        usleep(1000000 / per_second);
    }
    return leaked;
}

__attribute__((noinline)) static void *churn_fast(void *arg) {
    (void)arg;
    while (!stop) {
        char *p = malloc(4 * MIB);
        if (!p)
            continue;
        memset(p, 0xa5, 4 * MIB);
        free(p);
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: leak <MiB> <MiB per second>\n");
        return 2;
    }
    size_t mib = strtoul(argv[1], NULL, 10);
    unsigned per_second = strtoul(argv[2], NULL, 10);
    if (mib == 0 || per_second == 0) {
        fprintf(stderr, "usage: leak <MiB> <MiB per second>\n");
        return 2;
    }
    mallopt(M_MMAP_THRESHOLD, 128 * 1024);
    pthread_t churn;
    if (pthread_create(&churn, NULL, churn_fast, NULL) != 0) {
        perror("pthread_create");
        return 1;
    }
    size_t leaked = leak_slowly(mib, per_second);
    printf("leaked %zu\n", leaked);
    fflush(stdout);
    char line[64];
    while (fgets(line, sizeof line, stdin) && strncmp(line, "exit", 4) != 0) {
    }
    stop = 1;
    pthread_join(churn, NULL);
    return 0;
}
