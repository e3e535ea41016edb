"""A Python service that leaks: each request keeps a 64 KiB bytearray in a module-level list
(two calls below main), beside a function that churns temporary lists.

    python3 pyleak.py <kind> <MiB> <seconds> [wait]

kind `bytearray`: the churn's lists are small (pymalloc's arenas); `heap`: they are large
enough (1.6 KiB) to come from malloc's heap, where the kept bytearrays are carved from memory
the churn touched first; `zlib`: the kept objects are zlib.compress results (a C extension
allocating) instead. Keeps <MiB> MiB over about <seconds> seconds, prints `leaked <bytes>`,
then waits for stdin to close. With `wait`, prints `ready` first and starts on a line of
stdin."""

import os
import sys
import time
import zlib

KEPT = []


def churn(width):
    scratch = []
    for i in range(40):
        scratch.append([i] * width)
    return len(scratch)


def remember(payload):
    KEPT.append(bytearray(payload))  # leak: bytearray


def compress_all(payload):
    KEPT.append(zlib.compress(payload, 1))  # leak: zlib


def handle_request(kind, payload):
    if kind == "zlib":
        compress_all(payload)
    else:
        remember(payload)
    churn(200 if kind == "heap" else 8)


def main():
    kind = sys.argv[1]
    mib = int(sys.argv[2])
    seconds = float(sys.argv[3])
    size = 16 * 1024 if kind == "zlib" else 64 * 1024
    requests = mib * 1024 * 1024 // size
    if sys.argv[4:] == ["wait"]:
        print("ready", flush=True)
        sys.stdin.readline()
    kept = 0
    for _ in range(requests):
        # Random bytes: zlib cannot shrink them, so each result holds about `size` bytes.
        handle_request(kind, os.urandom(size))
        kept += size
        if len(KEPT) % 16 == 0:
            time.sleep(seconds * 16 / requests)
    print(f"leaked {kept}", flush=True)
    sys.stdin.read()


main()
