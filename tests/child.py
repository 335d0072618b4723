"""A test child: records its life in a journal, then sleeps until signalled.

argv: child.py JOURNAL_DIR [exit-after-seconds [exit-status]]
Appends "start <id> <node> <pid> <monotonic>" at start and "stop ..." on SIGTERM
to JOURNAL_DIR/<id>.log, so tests can check that two instances never overlapped.
"""

import os
import signal
import sys
import time

journal = sys.argv[1]
child_id = os.environ.get("RINGD_CHILD_ID", "?")
node = os.environ.get("RINGD_NODE", "?")


def record(what: str) -> None:
    with open(os.path.join(journal, f"{child_id}.log"), "a") as f:
        f.write(f"{what} {child_id} {node} {os.getpid()} {time.monotonic():.6f}\n")


def on_term(signum, frame):
    record("stop")
    sys.exit(0)


signal.signal(signal.SIGTERM, on_term)
record("start")
if len(sys.argv) > 2:
    time.sleep(float(sys.argv[2]))
    sys.exit(int(sys.argv[3]) if len(sys.argv) > 3 else 0)
while True:
    time.sleep(3600)
