"""The engine settings a streamer can change, their valid ranges, and the one check they all pass.

A setting reaches the engine three ways: the config file's `[engine]` table
(the panel saves it), a `merlb live` flag, and the live `set` command
(WebSocket or stdin). Each goes through `check_setting`, so what `set`
refuses is refused at start too: `[engine] smoothing = 7` once got past
start and sent the smoothed probabilities to 1e115 until every state failed
to encode, and `--threshold 5` hid the overlay for good.
"""
from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass
from typing import Any

MIN_RATE_HZ = 1.0
MAX_RATE_HZ = 30.0


@dataclass(frozen=True)
class Range:
    """[low, high], or [low, high) when `high_open`; no upper bound when `high` is None."""

    low: float
    high: float | None = None
    high_open: bool = False
    unit: str = ""

    def __contains__(self, v: float) -> bool:
        if not math.isfinite(v) or v < self.low:
            return False
        if self.high is None:
            return True
        return v < self.high if self.high_open else v <= self.high

    def __str__(self) -> str:
        if self.high is None:
            return f">= {self.low:g}{self.unit}"
        if self.high_open:
            return f"in [{self.low:g}, {self.high:g}){self.unit}"
        return f"{self.low:g}-{self.high:g}{self.unit}"


RANGES: dict[str, Range] = {
    "rate": Range(MIN_RATE_HZ, MAX_RATE_HZ, unit=" Hz"),
    "smoothing": Range(0.0, 1.0, high_open=True),   # 1 would never move; above it diverges
    "threshold": Range(0.0, 1.0),
    "min_dwell_s": Range(0.0, unit=" s"),
    "hide_after_s": Range(0.0, unit=" s"),
}


# `[engine] profile` / `merlb live --profile`: whose voice baseline the worker
# learns and keeps (obs_merlb/baseline_store.py). Not live: it names a file, so
# no path separators, and it does not start with a dot.
DEFAULT_PROFILE = "default"
PROFILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# Windows opens these as devices whatever the extension ("CON.json" is the console), in any case.
WINDOWS_DEVICES = re.compile(r"(CON|PRN|AUX|NUL|COM[0-9]|LPT[0-9])(\..*)?", re.IGNORECASE)
PROFILE_RULE = ("1-64 letters, digits, '.', '_' or '-', starting with a letter or digit, and not a device "
                "name of Windows (CON, PRN, AUX, NUL, COM0-9, LPT0-9)")


class SettingError(ValueError):
    """A setting's value is not a number or outside its range."""


def check_profile(value: Any) -> str:
    """`value` when it is a valid profile name; else SettingError naming the rule."""
    if not isinstance(value, str) or not PROFILE_NAME.fullmatch(value) or WINDOWS_DEVICES.fullmatch(value):
        raise SettingError(f"profile must be {PROFILE_RULE}, not {value!r}")
    return value


def check_setting(key: str, value: Any) -> float:
    """`value` as a float when it is valid for `key`; else SettingError naming the range."""
    if key not in RANGES:
        raise SettingError(f"unknown setting {key!r} (known: {', '.join(RANGES)})")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise SettingError(f"{key} must be a number {RANGES[key]}, not {value!r}") from None
    if v not in RANGES[key]:
        raise SettingError(f"{key} must be {RANGES[key]}, not {value!r}")
    return v


def flag(key: str) -> str:
    """The `merlb live` flag of a setting: min_dwell_s -> --min-dwell-s."""
    return "--" + key.replace("_", "-")


def checked_live_config(args: argparse.Namespace, path: str | None = None) -> dict[str, Any]:
    """The config for `merlb live`, after checking it and the flags; SystemExit with one line if not usable.

    Flags win over the file, so a flag is checked where given and the
    file's value only where the flag is not. The file must be readable: a
    worker that guessed defaults for a streamer's broken file would show a
    wrong overlay with no sign why.
    """
    from obs_merlb.config import ConfigError, config_path, read_config

    try:
        config = read_config(path)
    except ConfigError as e:
        raise SystemExit(f"merlb live: {e}") from None
    engine = config.get("engine")
    if engine is not None and not isinstance(engine, dict):
        raise SystemExit(f"merlb live: [engine] in {path or config_path()} must be a table")
    for key in RANGES:
        given = getattr(args, key, None)
        try:
            if given is not None:
                check_setting(key, given)
            elif engine and key in engine:
                check_setting(key, engine[key])
        except SettingError:
            where = f"{flag(key)} {given:g}" if given is not None else \
                f"[engine] {key} = {engine[key]!r} in {path or config_path()}"
            raise SystemExit(f"merlb live: {where} is refused: {key} must be {RANGES[key]}") from None
    given = getattr(args, "profile", None)
    try:
        if given is not None:
            check_profile(given)
        elif engine and "profile" in engine:
            check_profile(engine["profile"])
    except SettingError:
        where = f"--profile {given!r}" if given is not None else \
            f"[engine] profile = {engine['profile']!r} in {path or config_path()}"
        raise SystemExit(f"merlb live: {where} is refused: a profile name is {PROFILE_RULE}") from None
    return config
