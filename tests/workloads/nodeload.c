/*
 * One process of a busy node, for `cargo xtask bench node` (memlens' node-scale benchmark).
 *
 *   nodeload serve <seed> <held KiB> <churn KiB/s> <dir> <files> <file KiB>
 *   nodeload short <seed> <KiB>
 *   nodeload oom
 *
 * serve: a long-lived service. It holds <held KiB> in blocks of 64 KiB, each mapped and touched
 * under one of 2^17 distinct call paths (17 levels of two call sites: path_0/path_1), and every
 * second replaces <churn KiB/s> of them with blocks under other paths drawn from its seed, so the
 * node sees new stacks all the time. It writes <files> files of <file KiB> under <dir> at start
 * and reads one of them again every second (page cache that stays). Prints "ready" once set up;
 * exits on "exit" or end of input.
 * short: touches <KiB> under one path and exits (fork/exec/exit churn).
 * oom: touches memory under one path until its cgroup's limit kills it.
 *
 * Build: gcc -O2 -g -fno-optimize-sibling-calls nodeload.c -o nodeload   (no frame pointers)
 */
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define BLOCK (64 * 1024)
#define LEVELS 17
#define KEEP(p) __asm__ volatile("" : : "r"(p) : "memory")

static unsigned long long rng;

static unsigned next_path(void) {
    rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
    return (unsigned)(rng >> 33) & ((1u << LEVELS) - 1);
}

/* The page-touching leaf: one block mapped and filled. */
__attribute__((noinline)) static void *touch_block(size_t len) {
    char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    for (size_t i = 0; i < len; i += 4096)
        p[i] = (char)i;
    KEEP(p);
    return p;
}

static void *descend(unsigned path, int level, size_t len);

__attribute__((noinline)) static void *path_0(unsigned path, int level, size_t len) {
    void *p = descend(path, level, len);
    KEEP(p);
    return p;
}

__attribute__((noinline)) static void *path_1(unsigned path, int level, size_t len) {
    void *p = descend(path, level, len);
    KEEP(p);
    return p;
}

/* Bit <level> of <path> picks the call site: each path is its own stack. */
__attribute__((noinline)) static void *descend(unsigned path, int level, size_t len) {
    if (level == LEVELS)
        return touch_block(len);
    if (path & (1u << level))
        return path_1(path, level + 1, len);
    return path_0(path, level + 1, len);
}

static void write_files(const char *dir, int files, size_t len) {
    char *buf = malloc(len);
    if (!buf)
        return;
    memset(buf, 'x', len);
    for (int i = 0; i < files; i++) {
        char name[4096];
        snprintf(name, sizeof name, "%s/f%d", dir, i);
        int fd = open(name, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd < 0)
            continue;
        if (write(fd, buf, len) < 0)
            perror("write");
        close(fd);
    }
    free(buf);
}

static void read_file(const char *dir, int i) {
    char name[4096], buf[65536];
    snprintf(name, sizeof name, "%s/f%d", dir, i);
    int fd = open(name, O_RDONLY);
    if (fd < 0)
        return;
    while (read(fd, buf, sizeof buf) > 0)
        ;
    close(fd);
}

static int serve(unsigned long long seed, size_t held_kib, size_t churn_kib, const char *dir,
                 int files, size_t file_kib) {
    rng = seed;
    size_t blocks = held_kib * 1024 / BLOCK;
    if (blocks == 0)
        blocks = 1;
    void **held = calloc(blocks, sizeof *held);
    if (!held)
        return 1;
    for (size_t i = 0; i < blocks; i++)
        held[i] = descend(next_path(), 0, BLOCK);
    if (files > 0)
        write_files(dir, files, file_kib * 1024);
    printf("ready\n");
    fflush(stdout);
    size_t per_second = churn_kib * 1024 / BLOCK;
    size_t at = 0;
    for (int tick = 0;; tick++) {
        struct pollfd in = {.fd = 0, .events = POLLIN};
        if (poll(&in, 1, 1000) > 0) {
            char line[64];
            if (!fgets(line, sizeof line, stdin) || strncmp(line, "exit", 4) == 0)
                return 0;
        }
        for (size_t i = 0; i < per_second; i++, at = (at + 1) % blocks) {
            if (held[at])
                munmap(held[at], BLOCK);
            held[at] = descend(next_path(), 0, BLOCK);
        }
        if (files > 0)
            read_file(dir, tick % files);
    }
}

int main(int argc, char **argv) {
    if (argc == 8 && strcmp(argv[1], "serve") == 0)
        return serve(strtoull(argv[2], NULL, 10), strtoul(argv[3], NULL, 10),
                     strtoul(argv[4], NULL, 10), argv[5], atoi(argv[6]), strtoul(argv[7], NULL, 10));
    if (argc == 4 && strcmp(argv[1], "short") == 0) {
        rng = strtoull(argv[2], NULL, 10);
        return descend(next_path(), 0, strtoul(argv[3], NULL, 10) * 1024) ? 0 : 1;
    }
    if (argc == 2 && strcmp(argv[1], "oom") == 0) {
        rng = (unsigned long long)getpid();
        for (;;)
            descend(next_path(), 0, 1024 * 1024);
    }
    fprintf(stderr, "usage: nodeload serve <seed> <held KiB> <churn KiB/s> <dir> <files> "
                    "<file KiB> | short <seed> <KiB> | oom\n");
    return 2;
}
