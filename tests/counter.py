"""A child with state: counts up, keeps the count in $RINGD_HANDOFF_FILE.

It reads the count handed off by its previous instance, counts every 20 ms, and
writes the count on SIGTERM (and every 0.2 s), like a real stateful service.
"""

import os
import signal
import sys
import time

path = os.environ["RINGD_HANDOFF_FILE"]
try:
    with open(path) as f:
        count = int(f.read() or 0)
except FileNotFoundError:
    count = 0


def save() -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(count))
    os.replace(tmp, path)


def on_term(signum, frame):
    save()
    sys.exit(0)


signal.signal(signal.SIGTERM, on_term)
started = count
last_save = time.monotonic()
while True:
    time.sleep(0.02)
    count += 1
    if time.monotonic() - last_save > 0.2:
        save()
        last_save = time.monotonic()
