#!/usr/bin/env python3
"""Times the worker's "when is the next delivery claimable" read on a SQLite database the webhook bench kept.

Usage: scripts/next_due_cost.py DB   (e.g. DIR/subscriptions-10.db after
       `cargo bench --bench webhooks -- --store sqlite --workload W2 --keep-db DIR`)

Works on a copy: every delivery is made open and leased (as during a burst, when thousands are in flight or
waiting), then the read runs as a minimum over all claimable deliveries (before migration 8) and as the first
one in the order of the `deliveries_open_claimable_at` index (now), each before and after that index exists
(a database kept by a build before migration 8 has only the old index on the due time). Prints milliseconds
per read.
"""
import os
import shutil
import sqlite3
import sys
import tempfile
import time

AT = ("(CASE WHEN d.lease_until IS NOT NULL AND d.lease_until > d.next_attempt_at "
      "THEN d.lease_until ELSE d.next_attempt_at END)")
CLAIMABLE = """deliveries d JOIN subscriptions s ON s.id = d.subscription_id
     WHERE d.status IN ('pending', 'retrying') AND s.status IN ('active', 'failing')
     AND (s.ordered = 0 OR NOT EXISTS (SELECT 1 FROM deliveries e WHERE e.subscription_id = d.subscription_id
     AND e.status IN ('pending', 'retrying')
     AND (e.event_sequence < d.event_sequence OR (e.event_sequence = d.event_sequence AND e.id < d.id))))"""
OTHERS = """UNION ALL SELECT MIN(next_digest_at) AS t FROM subscriptions
     WHERE schedule IS NOT NULL AND status IN ('active', 'failing')
     UNION ALL SELECT MIN(verification_due_at) AS t FROM subscriptions WHERE status = 'pending'"""
MINIMUM = f"SELECT MIN(t) FROM (SELECT MIN({AT}) AS t FROM {CLAIMABLE} {OTHERS}) due"
FIRST = f"SELECT MIN(t) FROM (SELECT * FROM (SELECT {AT} AS t FROM {CLAIMABLE} ORDER BY {AT} LIMIT 1) first {OTHERS}) due"


def per_read_ms(conn, sql, n):
    start = time.perf_counter()
    for _ in range(n):
        conn.execute(sql).fetchone()
    return (time.perf_counter() - start) / n * 1000


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    with tempfile.TemporaryDirectory() as tmp:
        copy = os.path.join(tmp, "copy.db")
        shutil.copy(sys.argv[1], copy)
        if os.path.exists(sys.argv[1] + "-wal"):
            shutil.copy(sys.argv[1] + "-wal", copy + "-wal")
        conn = sqlite3.connect(copy)
        conn.execute("UPDATE deliveries SET status = 'pending', lease_until = '2099-01-01T00:00:00.000Z'")
        conn.commit()
        open_count = conn.execute("SELECT COUNT(*) FROM deliveries").fetchone()[0]
        print(f"{open_count} open deliveries")
        print(f"without the index: minimum over all {per_read_ms(conn, MINIMUM, 5):.3f} ms per read, "
              f"first in order {per_read_ms(conn, FIRST, 5):.3f} ms")
        conn.execute(
            "CREATE INDEX IF NOT EXISTS deliveries_open_claimable_at ON deliveries "
            "((CASE WHEN lease_until IS NOT NULL AND lease_until > next_attempt_at THEN lease_until "
            "ELSE next_attempt_at END)) WHERE status IN ('pending', 'retrying')"
        )
        conn.commit()
        print(f"with the index: minimum over all {per_read_ms(conn, MINIMUM, 200):.3f} ms per read, "
              f"first in order {per_read_ms(conn, FIRST, 200):.3f} ms")


if __name__ == "__main__":
    main()
