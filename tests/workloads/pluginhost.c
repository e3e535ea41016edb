/*
 * Loads a plugin only when told to, long after it started (memlens integration tests):
 *
 *   pluginhost <plugin.so> <MiB>
 *
 * Touches 8 MiB of its own at start (so a profiler sees it and reads its mappings before the
 * plugin exists), prints "ready"; on "load": dlopens the plugin, calls plugin_leak(<MiB>) in it,
 * prints "leaked <bytes>"; on "exit" (or end of input): exits.
 * Build: gcc -O2 -g pluginhost.c -o pluginhost   (glibc >= 2.34 has dlopen in libc)
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: pluginhost <plugin.so> <MiB>\n");
        return 2;
    }
    size_t mib = strtoul(argv[2], NULL, 10);
    char *own = malloc(8 << 20);
    if (!own)
        return 1;
    memset(own, 1, 8 << 20);
    printf("ready\n");
    fflush(stdout);
    char line[64];
    while (fgets(line, sizeof line, stdin) && strncmp(line, "exit", 4) != 0) {
        if (strncmp(line, "load", 4) != 0)
            continue;
        void *plugin = dlopen(argv[1], RTLD_NOW);
        if (!plugin) {
            fprintf(stderr, "%s\n", dlerror());
            return 1;
        }
        size_t (*leak)(size_t) = (size_t (*)(size_t))dlsym(plugin, "plugin_leak");
        if (!leak)
            return 1;
        printf("leaked %zu\n", leak(mib));
        fflush(stdout);
    }
    return 0;
}
