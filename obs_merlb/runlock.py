"""An exclusive hold on a lock file, for files two runs at once would write over.

Two `merlb live` workers on one voice profile would each save what they
learned over the other's; two `merlb analyze` runs into one `--out`
would write rows into the same partial timeline. The hold is an OS file
lock (flock, or msvcrt.locking on Windows), which goes with its process:
a killed run leaves a lock file behind but no stale hold.

The lock file is never removed: removing it while another process waits
on it would let a third create a new one and both hold "the" lock.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import IO

if os.name == "nt":  # pragma: no cover - Windows
    import msvcrt
else:
    import fcntl


def try_hold(path: Path) -> IO[bytes] | None:
    """Hold `path` (created, with its folder, if missing); the open file that holds it, or None
    when another process (or another open of it here) already holds it. OSError when it cannot
    be created. Closing the returned file lets go."""
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+b")
    try:
        if os.name == "nt":  # pragma: no cover - Windows
            f.seek(0)
            msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
        else:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    except OSError:
        if os.name == "nt":  # pragma: no cover - Windows: a held region is EACCES/EDEADLOCK
            f.close()
            return None
        # A filesystem without locks (some network shares): go on unguarded, as before locks.
    return f
