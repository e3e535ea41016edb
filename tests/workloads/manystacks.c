/*
 * Holds one page under each of 2^depth distinct call stacks (memlens benchmarks).
 *
 *   manystacks <depth>
 *
 * level() recurses through go_left()/go_right(); every leaf maps and touches one page, so each
 * page is first touched under its own path of return addresses. Prints "ready <pages>", then
 * holds until "exit" or end of input.
 * Build: gcc -O2 -fno-optimize-sibling-calls -fno-omit-frame-pointer manystacks.c -o manystacks
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

static size_t pages;

static void level(int depth);

__attribute__((noinline)) static void touch_page(void) {
    char *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        perror("mmap");
        exit(1);
    }
    memset(p, 1, 4096);
    pages++;
}

__attribute__((noinline)) static void go_left(int depth) {
    level(depth - 1);
    __asm__ volatile("" ::: "memory");
}

__attribute__((noinline)) static void go_right(int depth) {
    level(depth - 1);
    __asm__ volatile("" ::: "memory");
}

__attribute__((noinline)) static void level(int depth) {
    if (depth == 0) {
        touch_page();
        return;
    }
    go_left(depth);
    go_right(depth);
}

int main(int argc, char **argv) {
    int depth = argc == 2 ? atoi(argv[1]) : 0;
    if (depth <= 0 || depth > 24) {
        fprintf(stderr, "usage: manystacks <depth 1..24>\n");
        return 2;
    }
    level(depth);
    printf("ready %zu\n", pages);
    fflush(stdout);
    char line[64];
    while (fgets(line, sizeof line, stdin) && strncmp(line, "exit", 4) != 0) {
    }
    return 0;
}
