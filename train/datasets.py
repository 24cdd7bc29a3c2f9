"""Dataset readers: every supported layout becomes one list of `Item`s.

An item is one labelled sample: a file (image, audio or video), an optional
time range inside it, the person it shows (`group`, used for splitting) and a
label per head (`emotion`, `valence`, `arousal`, `behaviour`; None where the
dataset says nothing about that head, so the head's loss ignores it instead
of guessing).

Layouts (`detect_format` recognises each by itself):

* ``images``   - ``<emotion>/*.jpg|png`` folders (FER2013 and sets with other
  folder names: anger/angry, happiness/happy, ...). A split folder above the
  class folders (``train/``, ``val/``, ``test/``) is kept as the item's split.
  With FER+ votes (``ferplus_votes.csv`` beside the split folders, or named
  by ``votes=``) each voted image carries the vote distribution as a soft
  emotion target and the FER+ majority as its label (`attach_votes`).
* ``ravdess``, ``emodb``, ``crema_d``, ``ased``, ``urdu``, ``emotiontts_kr``,
  ``nemo`` - file-name conventions found anywhere under a folder; ``named``
  reads them all at once, ``mixed`` adds image folders too (a data root
  holding several sets).
* ``seed_csv`` - the MERLB seed's label CSV (``File, Valence_Negative, ...``,
  one-hot, some headers with a leading space); ``File`` is relative to the
  CSV's folder.
* ``csv``      - a generic CSV: ``path,start,end`` plus either a ``label``
  column (a class name of any head) or one-hot columns named after classes.
"""
from __future__ import annotations

import csv
import hashlib
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from obs_merlb import labels as L

log = logging.getLogger(__name__)

HEADS: tuple[str, ...] = ("emotion", "valence", "arousal", "behaviour")
HEAD_CLASSES: dict[str, tuple[str, ...]] = {
    "emotion": L.EMOTIONS, "valence": L.VALENCE, "arousal": L.AROUSAL, "behaviour": L.BEHAVIOURS,
}
IMAGE_EXT = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
AUDIO_EXT = {".wav", ".mp3", ".flac", ".ogg", ".m4a", ".aac", ".opus"}
VIDEO_EXT = {".mp4", ".mkv", ".flv", ".mov", ".avi", ".webm", ".m4v", ".ts"}
MEDIA_EXT = AUDIO_EXT | VIDEO_EXT
# Folder names that mark a predefined split; anything else is not a split.
SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val",
               "validation": "val", "publictest": "val", "test": "test", "privatetest": "test"}
SPEECH_SETS = ("ravdess", "emodb", "crema_d", "ased", "urdu", "emotiontts_kr", "nemo")
FORMATS = ("images", *SPEECH_SETS, "named", "mixed", "seed_csv", "csv")
VOTES_FILE = "ferplus_votes.csv"

RAVDESS_RE = re.compile(r"^(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)$")
EMODB_RE = re.compile(r"^(\d\d)([a-z]\d\d)([WLEAFTN])([a-z])$")
CREMA_RE = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})$")
# ASED: emotion letter + number, sentence, repetition, gender (01 female,
# 02 male), speaker number; a speaker is the gender-number pair.
ASED_RE = re.compile(r"^([nfhsaNFHSA])\d+-(\d\d)-(\d\d)-(\d\d)-(\d\d)$")
URDU_RE = re.compile(r"^S([MF])(\d+)_F(\d+)_([AHNS])(\d+)$")
KR_RE = re.compile(r"^([a-z]{3})(\d{5})$")
NEMO_RE = re.compile(r"^([A-Z]{2}\d)_(" + "|".join(L.NEMO) + r")_(\d+)$")


class DatasetError(ValueError):
    """A dataset path that cannot be read as any layout; the message is one line for the user.

    A ValueError, so callers that caught the readers' ValueErrors before keep working.
    """


@dataclass(frozen=True)
class Item:
    """One labelled sample. `labels` maps head -> class name or None."""

    path: str
    start: float | None = None
    end: float | None = None
    group: str = ""
    labels: dict[str, str | None] = field(default_factory=dict)
    dataset: str = ""
    split: str | None = None
    # FER+ crowd votes over L.EMOTIONS (normalised), the soft emotion target;
    # None where the set has no votes for this sample.
    soft: tuple[float, ...] | None = None
    # The folder's own emotion when `labels` came from votes instead (FER2013
    # with FER+), so evaluation can report both label kinds.
    orig: str | None = None

    @property
    def kind(self) -> str:
        return "image" if Path(self.path).suffix.lower() in IMAGE_EXT else "media"

    def label_index(self, head: str) -> int:
        """Class index for `head`, or -100 (the loss's ignore_index) when unlabelled."""
        name = self.labels.get(head)
        return -100 if name is None else HEAD_CLASSES[head].index(name)

    @property
    def emotions(self) -> tuple[str, ...]:
        """The emotions this sample's set lets a label be (L.SET_EMOTIONS)."""
        return L.SET_EMOTIONS.get(self.dataset, L.EMOTIONS)


def _emotion_labels(emotion: str | None) -> dict[str, str | None]:
    emo, val, aro = L.emotion_targets(emotion)
    return {"emotion": emo, "valence": val, "arousal": aro, "behaviour": None}


def _walk(root: Path, exts: set[str]) -> Iterator[Path]:
    """Files under root with one of `exts`, in a stable order (hidden entries skipped)."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and Path(name).suffix.lower() in exts:
                yield Path(dirpath) / name


def _split_of(path: Path, root: Path) -> str | None:
    for part in path.relative_to(root).parts[:-1]:
        split = SPLIT_NAMES.get(part.lower())
        if split:
            return split
    return None


# --------------------------------------------------------------------------- readers

def read_images(root: str | Path) -> list[Item]:
    """`<emotion>/*.jpg|png` folders anywhere under root.

    FER2013 has no person ids; each image is treated as its own group, so a
    random split of it is the best that can be done (its own train/val split
    folders are kept and preferred by `split_items`).
    """
    root = Path(root)
    items: list[Item] = []
    unknown: Counter[str] = Counter()
    for path in _walk(root, IMAGE_EXT):
        folder = path.parent.name
        key = folder.strip().lower()
        if key not in L.EMOTION_ALIASES or L.EMOTION_ALIASES[key] is None:
            unknown[str(path.parent.relative_to(root)) if path.parent != root else folder] += 1
            continue
        items.append(Item(path=str(path), group=f"img:{path.stem}", labels=_emotion_labels(key),
                          dataset="images", split=_split_of(path, root)))
    for folder, n in sorted(unknown.items()):
        log.warning("skipping image folder %r (%d files): %r is not one of the model's emotions %s",
                    folder, n, Path(folder).name, ", ".join(L.EMOTIONS))
    return items


def parse_named(path: Path) -> Item | None:
    """An item from a RAVDESS, EmoDB or CREMA-D file name, or None if the name is none of them."""
    stem, ext = path.stem, path.suffix.lower()
    if ext not in MEDIA_EXT:
        return None
    m = RAVDESS_RE.match(stem)
    if m:
        code, actor = m.group(3), m.group(7)
        if code not in L.RAVDESS:
            return None
        emo, val, aro = L.RAVDESS[code]
        return Item(path=str(path), group=f"ravdess:{actor}", dataset="ravdess",
                    labels={"emotion": emo, "valence": val, "arousal": aro, "behaviour": None})
    m = EMODB_RE.match(stem)
    if m:
        emo, val, aro = L.EMODB[m.group(3)]
        return Item(path=str(path), group=f"emodb:{m.group(1)}", dataset="emodb",
                    labels={"emotion": emo, "valence": val, "arousal": aro, "behaviour": None})
    m = CREMA_RE.match(stem)
    if m and m.group(3) in L.CREMA_D:
        return Item(path=str(path), group=f"crema_d:{m.group(1)}", dataset="crema_d",
                    labels=_emotion_labels(L.CREMA_D[m.group(3)]))
    m = ASED_RE.match(stem)
    if m:
        return Item(path=str(path), group=f"ased:{m.group(4)}-{m.group(5)}", dataset="ased",
                    labels=_emotion_labels(L.ASED[m.group(1).lower()]))
    m = URDU_RE.match(stem)
    if m:
        # The speaker code is read as one person across the emotion folders.
        # If the talk-show clips reuse a code for different people, this only
        # makes a group coarser, never lets one person straddle a split.
        return Item(path=str(path), group=f"urdu:{m.group(1)}{int(m.group(2))}", dataset="urdu",
                    labels=_emotion_labels(L.URDU[m.group(4)]))
    m = NEMO_RE.match(stem)
    if m:
        return Item(path=str(path), group=f"nemo:{m.group(1)}", dataset="nemo",
                    labels=_emotion_labels(L.NEMO[m.group(2)]))
    m = KR_RE.match(stem)
    # `<speaker>/wav/<speaker><index>`: the bare name is too generic to trust alone.
    if m and path.parent.name == "wav" and path.parent.parent.name == m.group(1):
        index = int(m.group(2))
        if 1 <= index <= 100 * len(L.EMOTIONTTS_KR):
            return Item(path=str(path), group=f"emotiontts_kr:{m.group(1)}", dataset="emotiontts_kr",
                        labels=_emotion_labels(L.EMOTIONTTS_KR[(index - 1) // 100]))
    return None


def read_named(root: str | Path, only: str | None = None) -> list[Item]:
    """Files named by one of the SPEECH_SETS' conventions anywhere under root."""
    root = Path(root)
    items = []
    for path in ([root] if root.is_file() else _walk(root, MEDIA_EXT)):
        item = parse_named(path)
        if item is not None and (only is None or item.dataset == only):
            items.append(item)
    return items


def _read_csv_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    # utf-8-sig drops the BOM Excel writes; headers are stripped because the
    # seed's CSV has " Arousal_Low" and friends with a leading space.
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            try:
                header = [h.strip() for h in next(reader)]
            except StopIteration:
                return [], []
            rows = [dict(zip(header, (c.strip() for c in row))) for row in reader if any(c.strip() for c in row)]
    except OSError as e:
        raise DatasetError(f"{path}: cannot read ({e.strerror or e})") from None
    except (UnicodeDecodeError, csv.Error) as e:
        raise DatasetError(f"{path}: not a UTF-8 CSV file ({e})") from None
    return header, rows


def _is_on(value: str | None) -> bool:
    try:
        return value is not None and value != "" and float(value) > 0.5
    except ValueError:
        return False


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


# One-hot column name (normalised) -> (head, class).
_ONE_HOT: dict[str, tuple[str, str]] = {}
for _head, _classes in HEAD_CLASSES.items():
    for _cls in _classes:
        _ONE_HOT[_norm(f"{_head}_{_cls}")] = (_head, _cls)
        if _head == "behaviour":
            _ONE_HOT[_norm(_cls)] = (_head, _cls)
for _alias, _emo in L.EMOTION_ALIASES.items():
    if _emo is not None:
        _ONE_HOT.setdefault(_norm(_alias), ("emotion", _emo))
_ONE_HOT.update({"vneg": ("valence", "negative"), "vneut": ("valence", "neutral"),
                 "vpos": ("valence", "positive"), "alow": ("arousal", "low"),
                 "aneut": ("arousal", "neutral"), "ahigh": ("arousal", "high")})
_GROUP_COLUMNS = ("group", "streamer", "speaker", "actor", "subject", "person")


def _one_hot_labels(header: Sequence[str], row: dict[str, str]) -> dict[str, str | None]:
    """Labels from one-hot columns; a head with no (or several) columns on is None."""
    on: dict[str, list[str]] = {h: [] for h in HEADS}
    for col in header:
        target = _ONE_HOT.get(_norm(col))
        if target and _is_on(row.get(col)):
            on[target[0]].append(target[1])
    out: dict[str, str | None] = {h: (v[0] if len(v) == 1 else None) for h, v in on.items()}
    if out["emotion"] is not None:
        # An emotion implies its circumplex valence/arousal unless the CSV says otherwise.
        _, val, aro = L.emotion_targets(out["emotion"])
        out["valence"] = out["valence"] or val
        out["arousal"] = out["arousal"] or aro
    return out


def _label_from_name(name: str) -> dict[str, str | None]:
    """Labels from one class name of any head (`happy`, `fighting`, `valence_negative`...)."""
    key = name.strip().lower()
    if key in L.EMOTION_ALIASES:
        return _emotion_labels(key)
    target = _ONE_HOT.get(_norm(key))
    out: dict[str, str | None] = {h: None for h in HEADS}
    if target is None:
        return out
    if target[0] == "emotion":
        return _emotion_labels(target[1])
    out[target[0]] = target[1]
    return out


def _csv_group(row: dict[str, str], rel: str, by_folder: bool) -> str:
    for col in row:
        if col.lower() in _GROUP_COLUMNS and row[col]:
            return row[col]
    if by_folder:
        # Clips filed in one folder per streamer/session: the folder is the person.
        return str(Path(rel).parent)
    stem = Path(rel).stem
    # Clip names like `<streamer>_<n>.mp4` or `<actor>-<clip>`: the prefix is the person.
    return re.split(r"[_\-\s]", stem, maxsplit=1)[0] or stem


def _float_or_none(value: str | None, csv_path: Path, rel: str) -> float | None:
    if value is None or value.strip() == "":
        return None
    try:
        return float(value)
    except ValueError:
        raise DatasetError(f"{csv_path}: start/end of {rel} must be seconds, got {value!r}") from None


def read_seed_csv(csv_path: str | Path) -> list[Item]:
    """The seed's label CSV: `File` + one-hot valence/arousal/behaviour columns."""
    csv_path = Path(csv_path)
    header, rows = _read_csv_rows(csv_path)
    file_col = next((h for h in header if h.lower() in ("file", "filename", "path", "clip")), None)
    if file_col is None:
        raise DatasetError(f"{csv_path}: no File column in header {header}")
    by_folder = len({str(Path(r[file_col]).parent) for r in rows}) > 1
    items = []
    for row in rows:
        rel = row[file_col]
        path = (csv_path.parent / rel) if not Path(rel).is_absolute() else Path(rel)
        if not path.exists():
            log.warning("%s: %s listed but not found; skipped", csv_path.name, rel)
            continue
        start, end = (_float_or_none(row.get(k), csv_path, rel) for k in ("start", "end"))
        items.append(Item(path=str(path), start=start, end=end, group=_csv_group(row, rel, by_folder),
                          labels=_one_hot_labels(header, row), dataset="seed_csv",
                          split=SPLIT_NAMES.get(row.get("split", "").lower())))
    return items


def read_csv(csv_path: str | Path) -> list[Item]:
    """Generic CSV: `path,start,end` and either `label` or one-hot (or per-head) columns."""
    csv_path = Path(csv_path)
    header, rows = _read_csv_rows(csv_path)
    lower = {h.lower(): h for h in header}
    path_col = lower.get("path") or lower.get("file") or lower.get("filename")
    if path_col is None:
        raise DatasetError(f"{csv_path}: needs a `path` column, header is {header}")
    by_folder = len({str(Path(r[path_col]).parent) for r in rows}) > 1
    items = []
    for row in rows:
        rel = row[path_col]
        path = csv_path.parent / rel if not Path(rel).is_absolute() else Path(rel)
        if not path.exists():
            log.warning("%s: %s listed but not found; skipped", csv_path.name, rel)
            continue
        if "label" in lower:
            labels = _label_from_name(row[lower["label"]])
            if all(v is None for v in labels.values()):
                log.warning("%s: unknown label %r for %s; skipped", csv_path.name, row[lower["label"]], rel)
                continue
        else:
            labels = _one_hot_labels(header, row)
        for head in HEADS:  # per-head class-name columns (`emotion`, `valence`, ...) win
            if head in lower and row[lower[head]]:
                labels.update({k: v for k, v in _label_from_name(row[lower[head]]).items()
                               if v is not None and (k == head or labels.get(k) is None)})
        start, end = (_float_or_none(row.get(lower.get(k, k)), csv_path, rel) for k in ("start", "end"))
        items.append(Item(path=str(path), start=start, end=end,
                          group=_csv_group(row, rel, by_folder), labels=labels, dataset="csv",
                          split=SPLIT_NAMES.get(row.get(lower.get("split", "split"), "").lower())))
    return items


# --------------------------------------------------------------------------- detection

def _csv_kind(path: Path) -> str | None:
    header, _ = _read_csv_rows(path) if path.stat().st_size < 50_000_000 else ([], [])
    if tuple(h.strip() for h in header[1:]) == L.FERPLUS_COLUMNS:
        return None    # FER+ votes describe the image folders beside them; not a dataset of its own
    norms = {_norm(h) for h in header}
    if "file" in norms and any(n.startswith(("valence", "arousal")) for n in norms):
        return "seed_csv"
    if norms & {"path", "file", "filename"}:
        return "csv"
    return None


def _probe_files(root: Path, exts: set[str], n: int) -> Iterator[Path]:
    """About `n` files under root, shared out among its top-level folders.

    A data root holding several sets is probed in each of them: the first
    `n` files of the walk would all come from the alphabetically first set.
    """
    tops = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    yield from (f for f in sorted(root.iterdir()) if f.is_file() and f.suffix.lower() in exts)
    for top in tops:
        for i, f in enumerate(_walk(top, exts)):
            if i >= max(1, n // len(tops)):
                break
            yield f


def detect_format(path: str | Path, probe: int = 2000) -> str:
    """Recognise a dataset layout (one of FORMATS) by looking at the files themselves.

    Raises DatasetError, naming the path, when it is missing, unreadable or in no known layout.
    """
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such file or folder")
    if path.is_file():
        if path.suffix.lower() == ".csv":
            kind = _csv_kind(path)
            if kind:
                return kind
            raise DatasetError(f"{path}: CSV header matches neither the seed's label CSV nor path,start,end,label")
        item = parse_named(path)
        if item is not None:
            return item.dataset
        raise DatasetError(f"{path}: a single file must be a CSV or carry a speech set's file name "
                           f"({', '.join(SPEECH_SETS)})")
    try:
        for csv_path in sorted(path.glob("*.csv")):
            kind = _csv_kind(csv_path)
            if kind:
                return kind
        named: Counter[str] = Counter()
        n_files = n_emotion_images = 0
        for f in _probe_files(path, IMAGE_EXT | MEDIA_EXT, probe):
            n_files += 1
            if f.suffix.lower() in IMAGE_EXT:
                n_emotion_images += L.EMOTION_ALIASES.get(f.parent.name.lower()) is not None
            else:
                item = parse_named(f)
                if item is not None:
                    named[item.dataset] += 1
    except OSError as e:
        raise DatasetError(f"{path}: cannot read the folder ({e.strerror or e})") from None
    if not n_files:
        raise DatasetError(f"{path}: no image, audio or video files in this folder (nor a label CSV)")
    if named and n_emotion_images:
        return "mixed"
    if named:
        return next(iter(named)) if len(named) == 1 else "named"
    if n_emotion_images:
        return "images"
    raise DatasetError(
        f"{path}: no known layout (emotion-named image folders, file names of a speech set "
        f"({', '.join(SPEECH_SETS)}), or a CSV with File/Valence_* or path,label columns); pass --format")


def _find_csv(path: Path, kind: str) -> Path:
    if path.is_file():
        return path
    for csv_path in sorted(path.glob("*.csv")):
        if _csv_kind(csv_path) == kind:
            return csv_path
    raise DatasetError(f"{path}: no {kind} CSV in this folder")


def find_votes(root: Path, levels: int = 2) -> Path | None:
    """A FER+ votes CSV in `root`, up to `levels` folders above it (FER2013's split folders sit below
    it) or in a folder just below it."""
    root = root if root.is_dir() else root.parent
    children = sorted(d for d in root.iterdir() if d.is_dir())   # a data root holding FER2013
    for folder in [*[root, *root.resolve().parents][: levels + 1], *children]:
        if (folder / VOTES_FILE).is_file():
            return folder / VOTES_FILE
    return None


@dataclass
class VoteStats:
    """What `attach_votes` did with each image, for the one line a run prints."""

    voted: int = 0
    no_majority: int = 0      # a tie, or contempt won: a soft target, no hard label
    dropped: int = 0          # mostly "unknown" / "not a face" votes
    contempt: int = 0         # every emotion vote was contempt, which has no class here: dropped
    unvoted: int = 0          # no row in the CSV: kept with the folder's label

    def line(self) -> str:
        return (f"FER+ votes: {self.voted} images with votes ({self.no_majority} without a majority among "
                f"the model's emotions), {self.dropped} dropped as mostly unknown / not a face, "
                f"{self.contempt} dropped as contempt only, {self.unvoted} without votes keep their folder label")


def read_votes(csv_path: str | Path) -> dict[str, list[float]]:
    """FER+ vote counts per image path (relative to the CSV's folder, '/'-separated)."""
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        if tuple(header[1:]) != L.FERPLUS_COLUMNS:
            raise DatasetError(f"{csv_path}: not a FER+ votes CSV (expected columns file, "
                               f"{', '.join(L.FERPLUS_COLUMNS)})")
        votes: dict[str, list[float]] = {}
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            try:
                counts = [float(v) for v in row[1:]]
            except ValueError:
                raise DatasetError(f"{csv_path}:{line_no}: vote counts must be numbers") from None
            if len(counts) != len(L.FERPLUS_COLUMNS) or min(counts) < 0:
                raise DatasetError(f"{csv_path}:{line_no}: expected {len(L.FERPLUS_COLUMNS)} non-negative counts")
            votes[row[0].strip().replace("\\", "/")] = counts
    return votes


def vote_target(counts: Sequence[float]) -> tuple[tuple[float, ...] | None, str | None]:
    """(soft target over L.EMOTIONS, majority emotion) from one image's FER+ vote counts.

    (None, None) when most votes say "unknown" or "not a face", or when no
    vote names one of the model's emotions. Contempt has no class here: its
    votes leave the soft target, and an image where it wins (or two
    emotions tie) has no hard label.
    """
    named = dict(zip(L.FERPLUS_COLUMNS, counts))
    total = sum(counts)
    if total <= 0 or named["unknown"] + named["NF"] > total / 2:
        return None, None
    emotion_votes = {L.EMOTION_ALIASES.get(k, k if k == "contempt" else None): v for k, v in named.items()
                     if k not in ("unknown", "NF")}
    soft = [emotion_votes.get(e, 0.0) for e in L.EMOTIONS]
    if sum(soft) <= 0:
        return None, None
    top = max(emotion_votes.values())
    winners = [e for e, v in emotion_votes.items() if v == top]
    majority = winners[0] if len(winners) == 1 and winners[0] != "contempt" else None
    return tuple(v / sum(soft) for v in soft), majority


def attach_votes(items: Sequence[Item], csv_path: str | Path) -> tuple[list[Item], VoteStats]:
    """Items with FER+ votes as soft targets and majority labels; mostly-unknown ones dropped."""
    votes = read_votes(csv_path)
    base = Path(csv_path).resolve().parent
    # A CSV named from elsewhere (`votes=`) cannot be matched by the path below it: its
    # rows end split-folder/label-folder/file, and so do the images' paths.
    by_tail = {"/".join(k.split("/")[-3:]): v for k, v in votes.items()}
    out: list[Item] = []
    stats = VoteStats()
    for it in items:
        try:
            rel = Path(it.path).resolve().relative_to(base).as_posix()
        except ValueError:
            rel = ""
        counts = votes.get(rel)
        if counts is None:
            counts = by_tail.get("/".join(Path(it.path).parts[-3:]))
        folder = it.labels.get("emotion")
        if counts is None:
            stats.unvoted += 1
            out.append(replace(it, orig=folder))
            continue
        soft, majority = vote_target(counts)
        if soft is None:
            mostly_unknown = counts[-2] + counts[-1] > sum(counts) / 2
            stats.dropped += mostly_unknown
            stats.contempt += not mostly_unknown
            continue
        stats.voted += 1
        stats.no_majority += majority is None
        out.append(replace(it, labels=_emotion_labels(majority), soft=soft, orig=folder))
    return out, stats


VOTES_HELP = ("FER+ votes for image folders: 'auto' (a ferplus_votes.csv beside the folders, the default), "
              "'none' (the folder labels only) or a CSV's path")


def parse_votes(value: str | Path | bool) -> Path | bool:
    """The `votes` setting (auto | none | a CSV path) as `load_items` takes it; DatasetError when a
    named CSV is not a file."""
    if isinstance(value, bool):
        return value
    text = str(value).strip()
    if text.lower() == "auto":
        return True
    if text.lower() == "none":
        return False
    path = Path(os.path.expanduser(text))
    if not path.is_file():
        raise DatasetError(f"votes {text!r}: no such CSV file ({VOTES_HELP})")
    return path


def load_items(path: str | Path, fmt: str | None = None, votes: str | Path | bool = True) -> list[Item]:
    """Items of a dataset at `path`; the layout is detected unless `fmt` names it.

    `votes`: a FER+ votes CSV for image folders, True to use one found beside
    the folders (`find_votes`), False to read the folder labels only.
    """
    path = Path(path)
    fmt = fmt or detect_format(path)
    if fmt in ("images", "mixed") and votes:
        csv_path = find_votes(path) if votes is True else Path(votes)
        if csv_path is not None:
            images = read_images(path)
            voted, stats = attach_votes(images, csv_path)
            log.info("%s (%s)", stats.line(), csv_path)
            return voted + (read_named(path) if fmt == "mixed" else [])
    if fmt == "images":
        return read_images(path)
    if fmt in SPEECH_SETS:
        return read_named(path, only=fmt)
    if fmt == "named":
        return read_named(path)
    if fmt == "mixed":
        return read_images(path) + read_named(path)
    if fmt == "seed_csv":
        return read_seed_csv(_find_csv(path, "seed_csv"))
    if fmt == "csv":
        return read_csv(_find_csv(path, "csv"))
    raise DatasetError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")


# --------------------------------------------------------------------------- splits

def _group_rank(group: str, seed: int) -> str:
    return hashlib.sha1(f"{seed}:{group}".encode()).hexdigest()


def split_items(items: Sequence[Item], val_fraction: float = 0.2, seed: int = 0,
                val_groups: Iterable[str] | None = None,
                use_folder_splits: bool = True) -> tuple[list[Item], list[Item]]:
    """(train, val) with every group (actor/speaker/streamer) wholly on one side.

    Items that carry a split from their folders (FER2013's train/ and val/)
    keep it. Otherwise `val_groups` (e.g. {"ravdess:17", "emodb:03"}) names
    the held-out people; without it a seeded hash of the group names picks
    about `val_fraction` of the groups, so the same people are held out on
    every run and on every machine.
    """
    train: list[Item] = []
    val: list[Item] = []
    rest: list[Item] = []
    for it in items:
        if use_folder_splits and it.split == "train":
            train.append(it)
        elif use_folder_splits and it.split in ("val", "test"):
            val.append(it)
        else:
            rest.append(it)
    if val_groups is not None:
        wanted = set(val_groups)
        for it in rest:
            (val if it.group in wanted else train).append(it)
        return train, val
    # Per dataset, so a small set mixed with a big one still has people on both sides.
    by_dataset: dict[str, list[Item]] = {}
    for it in rest:
        by_dataset.setdefault(it.dataset, []).append(it)
    for ds_items in by_dataset.values():
        groups = sorted({it.group for it in ds_items}, key=lambda g: _group_rank(g, seed))
        n_val = int(round(len(groups) * val_fraction))
        if val_fraction > 0 and len(groups) > 1:
            n_val = min(max(n_val, 1), len(groups) - 1)
        held = set(groups[:n_val])
        for it in ds_items:
            (val if it.group in held else train).append(it)
    return train, val


def describe(items: Sequence[Item]) -> dict[str, object]:
    """Counts for logs and reports: items, groups, and per-head class counts."""
    out: dict[str, object] = {"items": len(items), "groups": len({i.group for i in items}),
                              "datasets": dict(Counter(i.dataset for i in items))}
    for head in HEADS:
        counts = Counter(i.labels.get(head) for i in items if i.labels.get(head) is not None)
        if counts:
            out[head] = dict(sorted(counts.items()))
    return out
