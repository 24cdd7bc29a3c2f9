"""A stand-in for `merlb live` that the OBS script can supervise in tests.

Started as `<fake python> -m obs_merlb live ARGS` (the test writes a tiny
wrapper that runs this file), it keeps the worker's side of the contract in
docs/ARCHITECTURE.md and records what it saw beside its status file:
`fake-argv.json` (argv, and whether the password came by environment) and
`fake-stdin.jsonl` (every command line received). It exits on
{"cmd": "stop"} or end of stdin, like the real worker.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time


def main() -> int:
    argv = sys.argv[1:]
    status = argv[argv.index("--status-file") + 1]
    folder = os.path.dirname(status)
    pw = os.environ.get("MERLB_OBS_PASSWORD")
    with open(os.path.join(folder, "fake-argv.json"), "w", encoding="utf-8") as f:
        json.dump({"argv": argv, "pid": os.getpid(), "password_in_env": bool(pw),
                   "merlb_config": os.environ.get("MERLB_CONFIG"),
                   "password_in_argv": bool(pw) and any(pw in a for a in argv)}, f)
    stop = threading.Event()

    def status_loop() -> None:
        while not stop.is_set():
            tmp = status + ".tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump({"v": 1, "state": "running", "pid": os.getpid(), "wall": time.time(),
                           "fps": 8.0, "backend": "fake", "label": "happy",
                           "last_error": None}, f)
            os.replace(tmp, status)
            stop.wait(0.5)

    threading.Thread(target=status_loop, daemon=True).start()
    with open(os.path.join(folder, "fake-stdin.jsonl"), "a", encoding="utf-8") as log:
        for line in sys.stdin:
            log.write(line)
            log.flush()
            if json.loads(line).get("cmd") == "stop":
                break
    stop.set()
    print("fake worker: stopped cleanly", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
