/*
 * A leak and a churn sharing one thread and one heap, so that the allocator hands the leak
 * memory the churn touched first (memlens integration tests).
 *
 *   heapreuse <steps> <steps per second> [<pause in seconds before the first step> | wait]
 *
 * Each step, render_response() mallocs a 1 MiB buffer, fills it and frees it, and builds and
 * frees 64 small strings; then remember_request() keeps 64 blocks of 4 KiB (256 KiB a step,
 * never freed). The first 1 MiB buffer is mmap'd; freeing it raises glibc's dynamic mmap
 * threshold, so every later buffer comes from the heap, and the leak's blocks are carved from
 * the chunk the churn just freed: pages the churn touched first. Prints "ready" after the first
 * step (with "wait": then waits for a line on stdin before the steps), "leaked <bytes>" when
 * done (the bytes kept), then waits for "exit" (or end of input).
 * Build: gcc -O2 -g heapreuse.c -o heapreuse   (no frame pointers)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BLOCK 4096
#define BLOCKS_PER_STEP 64
#define BUFFER (1024 * 1024)

struct request {
    struct request *next;
    char body[BLOCK - sizeof(struct request *)];
};

static struct request *remembered;
static size_t kept;

__attribute__((noinline)) static void remember_request(unsigned step) {
    for (int i = 0; i < BLOCKS_PER_STEP; i++) {
        struct request *r = malloc(sizeof *r);
        if (!r)
            return;
        memset(r->body, (int)(step + i), sizeof r->body);
        r->next = remembered;
        remembered = r;
        kept += sizeof *r;
    }
}

__attribute__((noinline)) static unsigned render_response(unsigned step) {
    unsigned sum = 0;
    char *buffer = malloc(BUFFER);
    if (!buffer)
        return 0;
    memset(buffer, (int)step, BUFFER);
    for (int i = 0; i < 64; i++) {
        char *s = malloc(48 + (size_t)i * 8);
        if (!s)
            break;
        snprintf(s, 48, "header-%u-%d", step, i);
        sum += (unsigned char)s[7] + (unsigned char)buffer[i * 4096];
        free(s);
    }
    free(buffer);
    return sum;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: heapreuse <steps> <steps per second> [<pause s> | wait]\n");
        return 2;
    }
    long steps = strtol(argv[1], NULL, 10);
    long per_second = strtol(argv[2], NULL, 10);
    int wait = argc > 3 && strcmp(argv[3], "wait") == 0;
    long pause = argc > 3 && !wait ? strtol(argv[3], NULL, 10) : 0;
    if (steps <= 0 || per_second <= 0 || pause < 0) {
        fprintf(stderr, "usage: heapreuse <steps> <steps per second> [<pause s> | wait]\n");
        return 2;
    }
    unsigned checksum = render_response(0);
    printf("ready\n");
    fflush(stdout);
    sleep((unsigned)pause);
    char line[64];
    if (wait && !fgets(line, sizeof line, stdin))
        return 1;
    for (long step = 1; step <= steps; step++) {
        checksum += render_response((unsigned)step);
        remember_request((unsigned)step);
        usleep((useconds_t)(1000000 / per_second));
    }
    printf("leaked %zu\n", kept);
    fflush(stdout);
    fprintf(stderr, "checksum %u\n", checksum);
    while (fgets(line, sizeof line, stdin) && strncmp(line, "exit", 4) != 0) {
    }
    return 0;
}
