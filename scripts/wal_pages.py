#!/usr/bin/env python3
"""Which table or index each page in a SQLite WAL belongs to.

    scripts/wal_pages.py DB [CHANGES]

DB is a database file with its `DB-wal` beside it (as `cargo bench --bench webhooks -- --keep-db DIR`
leaves them). Prints the WAL's frames, its commits, and the frames per table or index (per change too,
when CHANGES says how many changes wrote them). Works on a copy: opening the database would checkpoint
the WAL. The WAL holds the frames since its last reset, so with automatic checkpoints on it covers the
last window of the run, not all of it.
"""
import collections
import shutil
import sqlite3
import struct
import sys
import tempfile
from pathlib import Path


def frames(wal: bytes):
    page_size = struct.unpack(">I", wal[8:12])[0]
    offset = 32
    while offset + 24 + page_size <= len(wal):
        page, commit_size = struct.unpack(">II", wal[offset : offset + 8])
        yield page, commit_size != 0
        offset += 24 + page_size


def main() -> None:
    db = Path(sys.argv[1])
    changes = int(sys.argv[2]) if len(sys.argv) > 2 else None
    wal = Path(f"{db}-wal").read_bytes()
    seen = list(frames(wal))
    commits = sum(1 for _, commit in seen if commit)
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "copy.db"
        shutil.copy(db, copy)
        shutil.copy(f"{db}-wal", f"{copy}-wal")
        owner = dict((page, name) for name, page in sqlite3.connect(copy).execute("SELECT name, pageno FROM dbstat"))
    counts = collections.Counter(owner.get(page, "?") for page, _ in seen)
    total = len(seen) or 1
    print(f"{len(seen)} frames, {commits} commits" + (f", {len(seen) / changes:.2f} frames per change" if changes else ""))
    for name, n in counts.most_common():
        per_change = f"  {n / changes:.2f}/change" if changes else ""
        print(f"{name:40s} {n:8d} {n / total * 100:5.1f}%{per_change}")


if __name__ == "__main__":
    main()
