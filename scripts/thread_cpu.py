#!/usr/bin/env python3
"""Runs a command and reports the CPU seconds (user + system) each of its threads named PREFIX* used, read
from /proc every 50 ms while it runs (a thread's last reading before it ends). The webhook bench starts one
server per workload, so `--workload W0,W1` reports the SQLite committer of each in turn. Lines of the
command's output that are webhook-bench result rows are printed too.

Usage: scripts/thread_cpu.py [--prefix hsda-sqlite] -- COMMAND [ARGS...]
Example (BENCHMARKS.md, session 6):
  scripts/thread_cpu.py -- target/release/deps/webhooks-HASH --store sqlite --workload W0,W1,W2
"""
import os
import re
import subprocess
import sys
import threading
import time


def main() -> int:
    args = sys.argv[1:]
    prefix = "hsda-sqlite"
    if args[:1] == ["--prefix"]:
        prefix, args = args[1], args[2:]
    if args[:1] == ["--"]:
        args = args[1:]
    if not args:
        print(__doc__)
        return 2
    child = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(child.stdout))
    reader.start()
    ticks = os.sysconf("SC_CLK_TCK")
    seen = {}
    while child.poll() is None:
        try:
            tids = os.listdir(f"/proc/{child.pid}/task")
        except OSError:
            break
        for tid in tids:
            try:
                with open(f"/proc/{child.pid}/task/{tid}/comm") as f:
                    if not f.read().startswith(prefix):
                        continue
                with open(f"/proc/{child.pid}/task/{tid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                seen[int(tid)] = (int(fields[11]) + int(fields[12])) / ticks
            except OSError:
                pass
        time.sleep(0.05)
    reader.join()
    for line in lines:
        if re.search(r"^\| W[0-4]", line):
            print(line.rstrip())
    print(f"CPU seconds of {prefix}* threads, in start order:", [seen[t] for t in sorted(seen)])
    return child.wait()


if __name__ == "__main__":
    sys.exit(main())
