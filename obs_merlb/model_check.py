"""The model a command runs, loaded with its folder checked, and the fallback from a damaged personalized model.

`merlb live` and `merlb analyze` load the model folder `--model` names,
else the active personalized model, else the shipped one (registry.py).
Loading checks the folder (model/config.py: config.json; inference.py:
each ONNX file and the voice reader, model/voice_reader.py; model/verify.py:
the weights' header and size) and a damaged one raises ModelFolderError,
one line naming the file.

What happens then depends on who chose the folder:
- the active personalized model (chosen by `merlb personalize`, not by the
  streamer at this start): the shipped model is loaded instead, with one
  error saying so. Under OBS a worker that exited here would be restarted
  into the same damaged model forever, and the stream would lose its
  overlay until someone read a log.
- `--model DIR` or the shipped model: there is nothing the streamer did not
  ask for to fall back to, so the command stops with that one line.

The weights file (model.safetensors) is checked even though these commands
run on the ONNX files: it is what `merlb eval`, `personalize` and a
re-export read, and its damage should surface where the streamer looks
(the overlay's error, the status line), not weeks later in a training run.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, TypeVar

from obs_merlb.model.config import ModelFolderError
from obs_merlb.model.verify import check_weights
from obs_merlb.registry import active_version, default_model_dir, resolve_model_dir

log = logging.getLogger(__name__)

T = TypeVar("T")


def load_checked(load: Callable[[Path], T], model: str | None, command: str) -> tuple[T, list[str]]:
    """`load(folder)` for the folder `model` names or the registry picks; returns (its result, problems).

    `problems` are lines for the streamer (already logged): a fallback from
    the active personalized model, damaged weights beside working ONNX files.
    A folder that cannot be used and has no fallback ends the command with
    one line (SystemExit).
    """
    folder = resolve_model_dir(model)
    problems: list[str] = []
    try:
        loaded = load(folder)
    except ModelFolderError as e:
        shipped = default_model_dir()
        if model or shipped is None or _same(folder, shipped):
            raise SystemExit(f"merlb {command}: {e}") from None
        problem = (f"the active personalized model {active_version() or folder.name} cannot be used: {e}; "
                   "running the shipped model instead (choose another version with `merlb personalize "
                   "activate`, or `merlb personalize rollback`)")
        log.error("%s", problem)
        problems.append(problem)
        folder = shipped
        try:
            loaded = load(folder)
        except ModelFolderError as e2:
            raise SystemExit(f"merlb {command}: {e2}") from None
    try:
        check_weights(folder)
    except ModelFolderError as e:
        problem = f"{e}; {command} runs on the ONNX files, but eval, personalize and a re-export need it"
        log.error("%s", problem)
        problems.append(problem)
    return loaded, problems


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return a == b
