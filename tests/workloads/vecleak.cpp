// A log that only grows, in a std::vector, built the way users build (memlens integration
// tests):
//
//   vecleak <MiB> <MiB per second>
//
// main -> handle_batch -> record_event -> std::vector::push_back: the vector doubles its storage
// (operator new in libstdc++, malloc in glibc) and moves its elements (memmove in glibc), so the
// pages are first touched inside libstdc++ and glibc. Prints "leaked <bytes>" (the vector's
// capacity) when done, then waits for "exit" (or end of input).
//
// Build: g++ -O2 vecleak.cpp -o vecleak   (no -g, no frame pointers)
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <unistd.h>
#include <vector>

#define NOINLINE __attribute__((noinline))

static std::vector<long> event_log;

NOINLINE void record_event(long v) {
    event_log.push_back(v);
    __asm__ volatile("" : : : "memory");
}

NOINLINE void handle_batch(long first, long count) {
    for (long i = 0; i < count; i++)
        record_event(first + i);
    __asm__ volatile("" : : : "memory");
}

int main(int argc, char **argv) {
    if (argc != 3) {
        std::fprintf(stderr, "usage: vecleak <MiB> <MiB per second>\n");
        return 2;
    }
    long mib = std::strtol(argv[1], nullptr, 10);
    long per_second = std::strtol(argv[2], nullptr, 10);
    if (mib <= 0 || per_second <= 0) {
        std::fprintf(stderr, "usage: vecleak <MiB> <MiB per second>\n");
        return 2;
    }
    const long per_mib = (1 << 20) / sizeof(long);
    for (long i = 0; i < mib; i++) {
        handle_batch(i * per_mib, per_mib);
        usleep(1000000 / per_second);
    }
    std::printf("leaked %zu\n", event_log.capacity() * sizeof(long));
    std::fflush(stdout);
    char line[64];
    while (std::fgets(line, sizeof line, stdin) && std::strncmp(line, "exit", 4) != 0) {
    }
    return 0;
}
