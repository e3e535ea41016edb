/*
 * A plugin that leaks, loaded with dlopen after its host started (memlens integration tests).
 * Build: gcc -O2 -g -shared -fPIC plugin.c -o libmemlens-plugin.so   (no frame pointers)
 */
#include <stdlib.h>
#include <string.h>

#define NOINLINE __attribute__((noinline))
#define KEEP(p) __asm__ volatile("" : : "r"(p) : "memory")

static char **kept;
static size_t nkept;

NOINLINE char *plugin_fill(size_t n) {
    char *p = malloc(n);
    if (p)
        memset(p, 0x3c, n);
    KEEP(p);
    return p;
}

/* Keeps `mib` buffers of 1 MiB; returns the bytes kept. */
NOINLINE size_t plugin_leak(size_t mib) {
    size_t kept_bytes = 0;
    kept = calloc(mib, sizeof(char *));
    for (size_t i = 0; kept && i < mib; i++) {
        kept[nkept] = plugin_fill(1 << 20);
        if (kept[nkept])
            kept_bytes += 1 << 20;
        nkept++;
    }
    KEEP(kept);
    return kept_bytes;
}
