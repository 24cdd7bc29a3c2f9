"""The `merlb` command.

Each command lives in its own module exposing
`add_arguments(parser: argparse.ArgumentParser) -> None` and
`run(args: argparse.Namespace) -> int`. The module is imported only when its
command is chosen, so `merlb --help` answers at once instead of paying for
torch and mediapipe imports.

Bad input gets one line and exit code 2: a command returns `refuse(...)`, or
raises SystemExit("what is wrong") from however deep, and `main` prints it as
`merlb COMMAND: what is wrong`. Flag values are checked by their argparse
type (`whole_number`, `number`, `setting_type`, `device_type`).
"""
from __future__ import annotations

import argparse
import importlib.util  # binds importlib too; a plain install has not imported .util for us
import logging
import logging.handlers
import math
import os
import re
import sys
from typing import Callable

from obs_merlb.model.config import ModelFolderError
from obs_merlb.settings import SettingError, check_setting

# `--log-file`: a web page or a stuck loop must not fill the disk through the worker's log.
LOG_FILE_BYTES = 5 * 2**20
LOG_FILE_BACKUPS = 2

DEVICE = re.compile(r"cpu|cuda(:\d+)?")

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("obs_merlb.demo", "run the model on the shipped demo clip and print what it sees"),
    "bench": ("obs_merlb.bench", "CPU latency per model part, TT fusion vs outer product, live path"),
    "export": ("obs_merlb.model.export", "export a saved model to ONNX (whole model and each part)"),
    "preprocess": ("obs_merlb.train.preprocess", "turn videos/audio/images into cached step features"),
    "train": ("obs_merlb.train.loop", "train a MERLB model (any fusion type, task, modalities)"),
    "eval": ("obs_merlb.train.evaluate", "evaluate a model: per-class F1, accuracy, confusion matrices"),
    "calibrate": ("obs_merlb.train.calibrate", "fit temperatures so shown confidences match accuracy"),
    "fit-reader": ("obs_merlb.train.fit_reader", "fit the voice reader that judges speech against the person"),
    "experiments": ("obs_merlb.train.experiments", "run fusion types x tasks and write the paper's table"),
    "live": ("obs_merlb.live", "run the live engine and serve events to the overlay and panel"),
    "analyze": ("obs_merlb.report", "analyse a recording: timeline CSV/JSON and an HTML report"),
    "panel": ("obs_merlb.panel.app", "open the PyQt control panel"),
    "install-obs": ("obs_merlb.install", "install the OBS script and enable obs-websocket"),
    "personalize": ("obs_merlb.train.personalize.cli", "retrain on your own past streams"),
}


def _available() -> dict[str, tuple[str, str]]:
    """Commands whose module exists in this checkout (unbuilt ones are not offered)."""
    out = {}
    for name, (module, help_) in COMMANDS.items():
        if importlib.util.find_spec(module.rsplit(".", 1)[0]) is None:
            continue
        try:
            if importlib.util.find_spec(module) is None:
                continue
        except ModuleNotFoundError:
            continue
        out[name] = (module, help_)
    return out


def main(argv: list[str] | None = None) -> int:
    # mediapipe's C++ side (glog, TFLite) prints start-up chatter to stderr
    # that buries our own messages; keep its warnings, drop its info lines.
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = _available()
    top = argparse.ArgumentParser(
        prog="merlb",
        description="obs-merlb: multimodal emotion recognition for live streamers.",
        epilog="Run `merlb COMMAND --help` for a command's options.",
    )
    top.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    top.add_argument("--log-file", default=None, help=argparse.SUPPRESS)
    sub = top.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_) in commands.items():
        sub.add_parser(name, help=help_, add_help=False)

    # First pass: find the command without importing anything heavy.
    known, _ = top.parse_known_args(argv)
    if known.command is None:
        top.print_help()
        return 0 if not argv or argv[0] in ("-h", "--help") else 2

    module = importlib.import_module(commands[known.command][0])
    parser = argparse.ArgumentParser(prog=f"merlb {known.command}",
                                     description=commands[known.command][1])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--log-file", default=None, metavar="PATH",
                        help=f"log to PATH instead of stderr, rotated at {LOG_FILE_BYTES // 2**20} MB "
                             f"({LOG_FILE_BACKUPS} older files kept)")
    module.add_arguments(parser)
    rest = argv[argv.index(known.command) + 1:]
    args = parser.parse_args(rest)
    setup_logging(args.verbose or known.verbose, args.log_file or known.log_file)
    try:
        return int(module.run(args) or 0)
    except ModelFolderError as e:   # any command reading a damaged model folder: one line, not a traceback
        return refuse(known.command, str(e))
    except SystemExit as e:
        # The commands' checks, however deep, refuse bad input with SystemExit("what is wrong");
        # here it gets the command's name and the exit code of bad input.
        if not isinstance(e.code, str):
            raise
        return refuse(known.command, e.code)


def refuse(command: str, message: str) -> int:
    """Bad input: one line `merlb COMMAND: message` on stderr; returns 2, the exit code of bad input.

    A message that already names a `merlb` command is printed as it is, not prefixed twice.
    """
    line = " ".join(part.strip() for part in message.splitlines() if part.strip())
    print(line if line.startswith(("merlb ", "merlb:")) else f"merlb {command}: {line}", file=sys.stderr)
    return 2


def whole_number(low: int = 1, high: int | None = None) -> Callable[[str], int]:
    """argparse type for a count or a port: a whole number from `low` (to `high`)."""
    rule = f"a whole number of {low} or more" if high is None else f"a whole number from {low} to {high}"

    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            n = None
        if n is None or n < low or (high is not None and n > high):
            raise argparse.ArgumentTypeError(f"{text!r} is not {rule}")
        return n

    return parse


def number(low: float, high: float | None = None, *, above: bool = False) -> Callable[[str], float]:
    """argparse type for a finite number from `low` (or above it, when `above`) to `high`."""
    rule = f"a number {'above' if above else 'from'} {low:g}" + ("" if high is None else f" to {high:g}")

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            v = math.nan
        if not (v > low if above else v >= low) or not v <= (math.inf if high is None else high):
            raise argparse.ArgumentTypeError(f"{text!r} is not {rule}")
        return v

    return parse


positive_int = whole_number(1)
positive_float = number(0, above=True)
port = whole_number(0, 65535)


def setting_type(key: str) -> Callable[[str], float]:
    """argparse type for a flag that sets the engine setting `key`, checked against its range in settings.py."""
    def parse(text: str) -> float:
        try:
            return check_setting(key, text)
        except SettingError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return parse


def device_type(*, auto: bool = False) -> Callable[[str], str]:
    """argparse type for --device: cpu, cuda or cuda:N (and `auto` where the command picks one)."""
    names = "auto, cpu, cuda or cuda:N" if auto else "cpu, cuda or cuda:N"

    def parse(text: str) -> str:
        if not (DEVICE.fullmatch(text) or (auto and text == "auto")):
            raise argparse.ArgumentTypeError(f"{text!r} is not a device: {names}")
        return text

    return parse


def setup_logging(verbose: bool, log_file: str | None) -> None:
    """Log lines to stderr, or to a size-capped, rotated file (the OBS script's worker.log)."""
    handlers: list[logging.Handler] | None = None
    if log_file:
        try:
            handlers = [logging.handlers.RotatingFileHandler(log_file, maxBytes=LOG_FILE_BYTES,
                                                             backupCount=LOG_FILE_BACKUPS, encoding="utf-8")]
        except OSError as e:
            print(f"merlb: cannot write the log file {log_file} ({e.strerror or e}); logging to stderr",
                  file=sys.stderr)
    # force: a file asked for replaces whatever handler an embedding process set up.
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=handlers,
                        force=handlers is not None,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


if __name__ == "__main__":
    raise SystemExit(main())
