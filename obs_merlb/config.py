"""The project's config file: `platformdirs.user_config_dir("obs-merlb")/config.toml`.

One TOML file shared by the OBS script's installer, the worker and the
panel, one table per part (e.g. `[obs]`, `[engine]`, `[sources]`,
`[overlay]`, `[panel]`). It may hold the obs-websocket password, so it is
written with user-only permissions (0600) and replaced atomically: a crash
while saving must never leave a half-written file that loses the password.

A missing file is empty settings; the caller's defaults apply. A file that
exists but cannot be read (a typo, not UTF-8, no permission) is never
written over: `read_config` raises `ConfigError` naming the file and the
line, and every writer (`update_section`, `save_config`) refuses with it,
so the password and the other tables survive a hand-edit gone wrong.
`load_config` is for readers that must go on (a panel opening, a default
URL): it logs that line once and returns {}. `tomllib` is in the standard
library from Python 3.11; `tomli` is its backport for 3.10.
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, Mapping

from obs_merlb.files import write_atomic

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

log = logging.getLogger(__name__)

APP_NAME = "obs-merlb"
FILE_NAME = "config.toml"


def config_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_config_dir(APP_NAME, appauthor=False))


def config_path() -> Path:
    """Where the config lives; `MERLB_CONFIG` overrides it (tests, portable installs)."""
    override = os.environ.get("MERLB_CONFIG")
    return Path(override) if override else config_dir() / FILE_NAME


class ConfigError(OSError):
    """The config file exists but cannot be read, so it must not be written over.

    An OSError, so that every caller that already reports a failed save (a
    full disk, a read-only folder) reports this one the same way.
    """


def read_config(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The whole config as nested dicts; {} when the file is missing.

    Raises ConfigError, one line naming the file and the line, when it
    exists but cannot be read. The line's text is not quoted: it may hold
    the obs-websocket password.
    """
    p = Path(path) if path is not None else config_path()
    try:
        with open(p, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as e:
        # tomllib's message ends "(at line N, column M)".
        raise ConfigError(f"config file {p}: {e}; fix it (or move the file away) and try again") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {p} is not UTF-8 text; fix it (or move the file away) "
                          "and try again") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {p}: {e.strerror or e}") from None


def load_config(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """`read_config` for readers that must go on: {} (and one warning) when the file is unreadable."""
    try:
        return read_config(path)
    except ConfigError as e:
        log.warning("%s; using the defaults meanwhile", e)
        return {}


def save_config(config: Mapping[str, Any], path: str | os.PathLike[str] | None = None) -> Path:
    """Write the whole config atomically with mode 0600; returns the path.

    Raises ConfigError, writing nothing, when the file there cannot be read:
    `config` was then not made from it, and replacing it would lose it.
    """
    import tomli_w

    p = Path(path) if path is not None else config_path()
    read_config(p)
    p.parent.mkdir(parents=True, exist_ok=True)
    data = tomli_w.dumps(_drop_none(config))
    write_atomic(p, data)
    try:
        os.chmod(p, 0o600)
    except OSError:
        pass
    return p


def get_section(name: str, path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    section = load_config(path).get(name, {})
    return dict(section) if isinstance(section, dict) else {}


def update_section(name: str, values: Mapping[str, Any],
                   path: str | os.PathLike[str] | None = None) -> Path:
    """Merge `values` into table `name`, keeping every other table and key.

    Read-modify-write of the whole file, so a setting another program saved
    a moment ago (the installer's password, say) is never lost; raises
    ConfigError, writing nothing, when the file cannot be read.
    """
    cfg = read_config(path)
    section = cfg.get(name)
    if not isinstance(section, dict):
        section = {}
    section.update(values)
    cfg[name] = section
    return save_config(cfg, path)


def _drop_none(value: Any) -> Any:
    """TOML has no null: a None means "unset", so the key is left out."""
    if isinstance(value, Mapping):
        return {str(k): _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_drop_none(v) for v in value if v is not None]
    return value
