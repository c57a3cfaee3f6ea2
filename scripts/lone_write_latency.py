#!/usr/bin/env python3
"""Latency of lone writes against a running hsda (BENCHMARKS.md, session 6): N sequential PUTs of new
organizations over one keep-alive connection, each followed by a GET of what it wrote, 10 ms apart, so no
two writes share a group commit. Prints p50/p90 of both, and the p50/p90 of fsync after a 12 KB write on
the disk of DIR (what one commit's WAL flush costs there).

Usage:
  hsda keys create --scope publish          # the key is the last line
  hsda serve --bind 127.0.0.1:18081 &
  scripts/lone_write_latency.py http://127.0.0.1:18081 KEY [N=300] [DIR=.]
"""
import http.client
import json
import os
import sys
import tempfile
import time
import urllib.parse
import uuid


def percentiles(samples):
    samples = sorted(samples)
    return samples[len(samples) // 2] * 1e3, samples[int(len(samples) * 0.9)] * 1e3


def main() -> int:
    if len(sys.argv) < 3:
        print(__doc__)
        return 2
    base, key = urllib.parse.urlparse(sys.argv[1]), sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 300
    directory = sys.argv[4] if len(sys.argv) > 4 else "."
    conn = http.client.HTTPConnection(base.hostname, base.port)
    puts, gets = [], []
    for i in range(n):
        path = f"/organizations/{uuid.uuid4()}"
        body = json.dumps({"name": f"Org {i}", "description": "latency"})
        headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
        started = time.perf_counter()
        conn.request("PUT", path, body, headers)
        answer = conn.getresponse()
        answer.read()
        puts.append(time.perf_counter() - started)
        assert answer.status < 300, answer.status
        started = time.perf_counter()
        conn.request("GET", path)
        conn.getresponse().read()
        gets.append(time.perf_counter() - started)
        time.sleep(0.01)
    syncs = []
    with tempfile.NamedTemporaryFile(dir=directory) as f:
        fd = f.fileno()
        os.pwrite(fd, b"y" * 4096 * 300, 0)
        os.fsync(fd)
        for i in range(300):
            os.pwrite(fd, b"x" * 4096 * 3, (i % 100) * 4096 * 3)
            started = time.perf_counter()
            os.fsync(fd)
            syncs.append(time.perf_counter() - started)
    print("PUT p50 %.3f ms p90 %.3f ms | GET p50 %.3f ms p90 %.3f ms" % (*percentiles(puts), *percentiles(gets)))
    print("fsync after a 12 KB write: p50 %.3f ms p90 %.3f ms" % percentiles(syncs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
