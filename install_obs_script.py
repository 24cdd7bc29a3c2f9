#!/usr/bin/env python3
"""Install the obs-merlb script into OBS Studio (same as `merlb install-obs`).

    python install_obs_script.py             # set up OBS (close OBS first)
    python install_obs_script.py --dry-run   # show every change, make none
    python install_obs_script.py --uninstall # undo it

Run it with the Python that has obs-merlb installed: that Python becomes the
worker's. `--help` lists every option.
"""
from __future__ import annotations

import sys

try:
    from obs_merlb.install import main
except ImportError as e:  # run from a checkout without `pip install -e .`
    sys.exit(f"obs-merlb is not installed for {sys.executable} ({e}); "
             "run `pip install -e .` first, or use that environment's Python")

if __name__ == "__main__":
    raise SystemExit(main())
