/*
 * A leak three calls below main, beside a churn in the same thread, built the way users build
 * (memlens integration tests):
 *
 *   deepleak <MiB> <MiB per second>
 *
 * main -> parse_request -> build_index -> alloc_node -> malloc + memset leaks 1 MiB per request;
 * build_index -> add_entries also keeps 512 small entries of 200 bytes, whose heap pages glibc's
 * malloc touches first (it writes the header of the chunk after each one); every request also
 * fills and frees a 4 MiB scratch buffer (main -> parse_request -> scratch_pass). mallopt pins the mmap threshold so that free() really returns the scratch
 * memory. Prints "leaked <bytes>" when done, then waits for "exit" (or end of input).
 *
 * Build: gcc -O2 -g deepleak.c -o deepleak   (no -fno-omit-frame-pointer: GCC's default)
 * The empty asm statements keep each call a real call: without them GCC turns the memset at the
 * end of alloc_node into a jump (a tail call), and no unwinder can show a frame that is gone.
 */
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MIB (1024 * 1024)
#define NOINLINE __attribute__((noinline))
#define KEEP(p) __asm__ volatile("" : : "r"(p) : "memory")

static char **index_rows;
static size_t index_len;

NOINLINE char *alloc_node(size_t n) {
    char *p = malloc(n);
    if (p)
        memset(p, 0x5a, n);
    KEEP(p);
    return p;
}

struct entry {
    struct entry *next;
    char key[192];
};

static struct entry *entries;

NOINLINE void add_entries(int n) {
    for (int i = 0; i < n; i++) {
        struct entry *e = malloc(sizeof *e);
        if (!e)
            return;
        e->next = entries;
        entries = e;
    }
    KEEP(entries);
}

NOINLINE int build_index(size_t n) {
    char *node = alloc_node(n);
    if (!node)
        return 0;
    index_rows[index_len++] = node;
    add_entries(512);
    KEEP(node);
    return 1;
}

NOINLINE void scratch_pass(size_t n) {
    char *p = malloc(n);
    if (!p)
        return;
    memset(p, 0xa5, n);
    KEEP(p);
    free(p);
}

NOINLINE int parse_request(void) {
    int ok = build_index(MIB);
    scratch_pass(4 * MIB);
    KEEP(ok);
    return ok;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: deepleak <MiB> <MiB per second>\n");
        return 2;
    }
    size_t mib = strtoul(argv[1], NULL, 10);
    unsigned per_second = strtoul(argv[2], NULL, 10);
    if (mib == 0 || per_second == 0) {
        fprintf(stderr, "usage: deepleak <MiB> <MiB per second>\n");
        return 2;
    }
    mallopt(M_MMAP_THRESHOLD, 128 * 1024);
    index_rows = calloc(mib, sizeof(char *));
    size_t leaked = 0;
    for (size_t i = 0; i < mib; i++) {
        if (parse_request())
            leaked += MIB;
        usleep(1000000 / per_second);
    }
    printf("leaked %zu\n", leaked);
    fflush(stdout);
    char line[64];
    while (fgets(line, sizeof line, stdin) && strncmp(line, "exit", 4) != 0) {
    }
    return 0;
}
