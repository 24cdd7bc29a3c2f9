"""Training data in memory: preprocessed steps -> windows -> padded batches.

A record is one item's steps (`mask` (N, 4) plus the stored modalities in
their storage dtypes, converted to float32 per batch to keep FER2013 at
~120 MB instead of ~500 MB). A sample is a window of at most `steps` steps
of it: random in training, centred for validation. Batches are padded to
their longest window with masked (all-zero) steps, so a batch of FER images
runs at T=1 and costs one encoder pass per image.

Label-matched pairing (`PairedDataset`) builds audio-visual samples from
separate sets: a face sample and a voice clip with the same emotion, from
different people, the face repeated over the voice window (a still face
over a spoken second is what a webcam shows at 4 steps/s). There is no
public paired audio-visual set big enough to train fusion on; this is the
documented stand-in, together with the model's modality dropout.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from obs_merlb.calibration import Calibration, modality_sets
from obs_merlb.labels import EMOTIONS, FACE, IGNORE, MODALITIES, VOICE
from obs_merlb.perception.baseline import BandStats, Prior, apply as apply_baseline
from obs_merlb.perception.voice import HOP, LOG_EPS, SAMPLE_RATE

from .datasets import HEAD_CLASSES, HEADS, Item
from .preprocess import PER_STEP, STORE_DTYPE, Prepared, read_shard

FRAME_S = HOP / SAMPLE_RATE          # one log-mel frame, seconds


@dataclass
class Records:
    """Items, their step arrays and their label indices (-100 = unlabelled).

    `emotion_q` is each item's emotion target as a distribution (FER+ votes,
    else one-hot, else zeros) and `emotion_allowed` the emotions its set
    offers; both follow from the items unless given.
    """

    items: list[Item]
    arrays: list[dict[str, np.ndarray]]
    targets: np.ndarray                 # (N, len(HEADS)) int64
    emotion_q: np.ndarray | None = None          # (N, len(EMOTIONS)) float32
    emotion_allowed: np.ndarray | None = None    # (N, len(EMOTIONS)) bool

    def __post_init__(self) -> None:
        if self.emotion_q is None:
            self.emotion_q = emotion_distributions(self.items)
        if self.emotion_allowed is None:
            self.emotion_allowed = allowed_emotions(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def subset(self, idx: Sequence[int]) -> "Records":
        idx = list(idx)
        return Records([self.items[i] for i in idx], [self.arrays[i] for i in idx], self.targets[idx],
                       self.emotion_q[idx], self.emotion_allowed[idx])

    @staticmethod
    def concat(parts: Sequence["Records"]) -> "Records":
        parts = [p for p in parts if len(p)]
        if not parts:
            return Records([], [], np.zeros((0, len(HEADS)), np.int64))
        return Records([i for p in parts for i in p.items], [a for p in parts for a in p.arrays],
                       np.concatenate([p.targets for p in parts]),
                       np.concatenate([p.emotion_q for p in parts]),
                       np.concatenate([p.emotion_allowed for p in parts]))


def emotion_distributions(items: Sequence[Item]) -> np.ndarray:
    """(N, len(EMOTIONS)): FER+ votes where an item has them, else its label one-hot, else zeros."""
    q = np.zeros((len(items), len(EMOTIONS)), np.float32)
    for i, it in enumerate(items):
        if it.soft is not None:
            q[i] = it.soft
        elif it.labels.get("emotion") is not None:
            q[i, EMOTIONS.index(it.labels["emotion"])] = 1.0
    return q


def blend_original(records: Records, weight: float) -> Records:
    """Records whose voted items' targets take `weight` of their original folder label."""
    q = records.emotion_q.copy()
    for i, it in enumerate(records.items):
        if it.soft is not None and it.orig is not None:
            q[i] *= 1.0 - weight
            q[i, EMOTIONS.index(it.orig)] += weight
    return Records(records.items, records.arrays, records.targets, q, records.emotion_allowed)


def allowed_emotions(items: Sequence[Item]) -> np.ndarray:
    """(N, len(EMOTIONS)) bool: the emotions each item's set offers (labels.SET_EMOTIONS)."""
    out = np.ones((len(items), len(EMOTIONS)), bool)
    for i, it in enumerate(items):
        if it.emotions != EMOTIONS:
            out[i] = [e in it.emotions for e in EMOTIONS]
    return out


def targets_of(items: Sequence[Item]) -> np.ndarray:
    return np.array([[it.label_index(h) for h in HEADS] for it in items], dtype=np.int64).reshape(-1, len(HEADS))


def load_records(prep: Prepared, items: Sequence[Item] | None = None) -> Records:
    """Arrays of `items` (default: all of `prep`), kept in their storage dtypes."""
    wanted = None if items is None else {id(it) for it in items}
    shards: dict[str, dict[str, np.ndarray]] = {}
    out_items, arrays = [], []
    for it, sp, key in zip(prep.items, prep.shards, prep.keys):
        if wanted is not None and id(it) not in wanted:
            continue
        if sp not in shards:
            s = read_shard(sp)
            s["_index"] = {k: i for i, k in enumerate(s["keys"].tolist())}  # type: ignore[assignment]
            shards[sp] = s
        s = shards[sp]
        i = s["_index"][key]  # type: ignore[index]
        a, b = int(s["offsets"][i]), int(s["offsets"][i + 1])
        rec = {"mask": s["mask"][a:b]}
        for k in PER_STEP:
            if k in s:
                rec[k] = s[k][a:b]
        for m in MODALITIES:
            if m in s and s["mask"][a:b, MODALITIES.index(m)].any():
                rec[m] = s[m][a:b]
        out_items.append(it)
        arrays.append(rec)
    return Records(out_items, arrays, targets_of(out_items))


def to_float(modality: str, x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32)
    return x / 255.0 if STORE_DTYPE[modality] == np.uint8 else x


# --------------------------------------------------------------------------- augmentation


def augment_face(x: np.ndarray, rng: np.random.Generator, erase: float = 0.0) -> np.ndarray:
    """(t, 1, S, S) float: one random flip/rotation/shift/zoom/contrast for the whole window.

    The same transform for every step of a window, because a webcam does not
    re-frame the face between steps. One affine warp does rotation, zoom and
    shift together (edges replicated, as a live crop near the frame edge is).
    With probability ``erase``, a random rectangle (2-20% of the face) is
    then filled with noise, the same one at every step (random erasing,
    Zhong et al. 2020): a hand, a mic or a headset strap over part of the
    face, and a regulariser that makes the encoder use more than one region.
    """
    import cv2

    t, _, s, _ = x.shape
    if rng.random() < 0.5:
        x = x[..., ::-1]
    angle = float(rng.uniform(-12.0, 12.0))       # head tilt the eye alignment leaves over
    zoom = float(rng.uniform(0.9, 1.1))
    shift = rng.uniform(-0.1, 0.1, size=2) * s
    warp = cv2.getRotationMatrix2D(((s - 1) / 2, (s - 1) / 2), angle, zoom)
    warp[:, 2] += shift
    out = np.stack([cv2.warpAffine(np.ascontiguousarray(c[0]), warp, (s, s), flags=cv2.INTER_LINEAR,
                                   borderMode=cv2.BORDER_REPLICATE)[None] for c in x])
    gain, bias = rng.uniform(0.75, 1.25), rng.uniform(-0.1, 0.1)
    mean = out.mean()
    out = np.clip((out - mean) * gain + mean + bias, 0.0, 1.0).astype(np.float32)
    # Drawn only when asked for, so runs without erasing keep their augmentation stream.
    if erase > 0 and rng.random() < erase:
        area = rng.uniform(0.02, 0.2) * s * s
        aspect = np.exp(rng.uniform(np.log(0.3), np.log(3.3)))
        h = int(min(s, max(1, round(np.sqrt(area * aspect)))))
        w = int(min(s, max(1, round(np.sqrt(area / aspect)))))
        top, left = int(rng.integers(0, s - h + 1)), int(rng.integers(0, s - w + 1))
        out[..., top:top + h, left:left + w] = rng.random((h, w), dtype=np.float32)
    return out


def room_reverb(power: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(..., mels, frames) mel power smeared forward in time by a random room.

    Late reverberation on the mel envelope (Polack's model): each band's
    power decays exponentially after it, RT60 0.15-0.7 s (shorter in the high
    bands, which walls absorb first), at a direct-to-reverberant energy ratio
    of 0-12 dB. Causal: a frame only gains from the frames before it.
    """
    mels, frames = power.shape[-2:]
    band = np.linspace(0.0, 1.0, mels)[:, None]
    rt60, drr_db = rng.uniform(0.15, 0.7), rng.uniform(0.0, 12.0)
    tau = rt60 / np.log(1e6) / FRAME_S * (1.0 - 0.5 * band)           # 60 dB decay, in frames
    lags = np.arange(1, int(np.ceil(5 * tau.max())) + 1)[None, :]
    tail = np.exp(-lags / tau)
    tail *= 10 ** (-drr_db / 10) / tail.sum(axis=1, keepdims=True)
    wet = np.zeros_like(power)
    for k in range(min(tail.shape[1], frames - 1)):
        wet[..., k + 1:] += power[..., :frames - k - 1] * tail[:, k][:, None]
    return power + wet


def background_noise(power: np.ndarray, speech: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(..., mels, frames) mel power over a random stationary noise.

    Coloured (a log-spectral slope across the bands, from rumble-heavy to
    white) with a small frame-to-frame level wobble, at 5-30 dB SNR against
    the mean power of ``speech`` (the present steps): a fan, a game or a room
    tone under the voice.
    """
    mels, frames = power.shape[-2:]
    band = np.linspace(0.0, 1.0, mels)[:, None]
    snr_db = rng.uniform(5.0, 30.0)
    noise = np.exp(rng.uniform(-4.0, 1.0) * band) * np.exp(rng.normal(0.0, 0.3, size=frames))
    return power + noise * (speech.mean() / noise.mean() * 10 ** (-snr_db / 10))


def reverb_and_noise(x: np.ndarray, rng: np.random.Generator, room: float) -> np.ndarray:
    """(t, 1, mels, frames) log-mel heard in a random room (``room_reverb``) and,
    drawn apart, over background noise (``background_noise``), each for a
    share ``room`` of windows, once per window. Both act on power, where
    they add. A step whose log-mel is all zeros is a masked step (no voice
    there) and stays so.
    """
    present = np.abs(x).reshape(len(x), -1).max(axis=1) > 0
    if not present.any():
        return x
    power = np.maximum(np.exp(x.astype(np.float64)) - LOG_EPS, 0.0)
    if rng.random() < room:
        power = room_reverb(power, rng)
    if rng.random() < room:
        power = background_noise(power, power[present], rng)
    out = np.log(power + LOG_EPS).astype(x.dtype)
    out[~present] = 0
    return out


def augment_voice(x: np.ndarray, rng: np.random.Generator, warp: bool = True, eq: float = 0.0,
                  room: float = 0.0) -> np.ndarray:
    """(t, 1, mels, frames) log-mel: speaker/tempo warps, then SpecAugment-style masks per step.

    The warps are one draw per window (the same voice throughout): a shift of
    the spectrum by up to 3 mel bands, a rough stand-in for another vocal
    tract length and pitch, and a tempo change of up to +-15%. With only 24
    RAVDESS actors and 8 EmoDB speakers to learn from, the voice encoder
    otherwise learns the training speakers instead of the emotion.
    ``eq`` > 0 adds a random equaliser curve, also one per window: a tilt of
    up to +-eq (log-mel units, ln of power) from the lowest band to the
    highest and a broad bump of up to +-eq/2, as another microphone, room or
    voice quality colours the spectrum (without it, the voice encoder heard
    most of CREMA-D's recordings as "fear"). Off, it draws nothing, so runs
    without it repeat exactly.
    ``room`` > 0 puts that share of windows in a reverberant room and that
    share over background noise (``reverb_and_noise``), drawn after the
    warps (the voice is the speaker's before the room hears it) and before
    the equaliser (the microphone colours both). Off, it draws nothing.
    Masks are filled with the patch mean, not zero: log-mel zero is a loud
    signal (log(1)), not silence.
    """
    x = x.copy()
    _, _, mels, frames = x.shape
    if warp:
        k = int(rng.integers(-3, 4))
        if k > 0:
            x[:, :, k:] = x[:, :, :-k].copy()
            x[:, :, :k] = x[:, :, k:k + 1]
        elif k < 0:
            x[:, :, :k] = x[:, :, -k:].copy()
            x[:, :, k:] = x[:, :, k - 1:k]
        rate = rng.uniform(0.85, 1.15)
        # Read frames at `rate` around the patch centre (linear interpolation).
        pos = np.clip((np.arange(frames) - frames / 2) * rate + frames / 2, 0, frames - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, frames - 1)
        frac = (pos - lo).astype(x.dtype)
        x = x[..., lo] * (1 - frac) + x[..., hi] * frac
    if room > 0:
        x = reverb_and_noise(x, rng, room)
    if eq > 0:
        band = np.linspace(-1.0, 1.0, mels)
        tilt, bump = rng.uniform(-eq, eq), rng.uniform(-eq / 2, eq / 2)
        centre, width = rng.uniform(-1.0, 1.0), rng.uniform(0.2, 0.6)
        curve = tilt * band / 2 + bump * np.exp(-0.5 * ((band - centre) / width) ** 2)
        x = x + curve.astype(x.dtype)[:, None]
    for step in x:
        fill = float(step.mean())
        f = int(rng.integers(0, mels // 8 + 1))
        f0 = int(rng.integers(0, mels - f + 1))
        step[:, f0:f0 + f, :] = fill
        w = int(rng.integers(0, frames // 8 + 1))
        w0 = int(rng.integers(0, frames - w + 1))
        step[:, :, w0:w0 + w] = fill
    return x


# --------------------------------------------------------------------------- datasets


def window(rec: dict[str, np.ndarray], steps: int, rng: np.random.Generator | None,
           image_steps: int = 1) -> dict[str, np.ndarray]:
    """At most `steps` consecutive steps (random start when `rng` is given, else centred).

    A one-step record (an image) is repeated to `image_steps` steps.
    """
    n = rec["mask"].shape[0]
    if n == 1 and image_steps > 1:
        return {k: np.repeat(v, image_steps, axis=0) for k, v in rec.items()}
    if n <= steps:
        return rec
    if rng is None:
        start = (n - steps) // 2
    else:
        # Only windows that hold something: a clip's leading silence alone would
        # train the heads to name an emotion from no input at all.
        seen = np.concatenate([[0], np.cumsum(rec["mask"].any(axis=1))])
        starts = np.flatnonzero(seen[steps:] > seen[:-steps])   # windows with a present step
        start = int(starts[rng.integers(0, len(starts))]) if len(starts) else int(rng.integers(0, n - steps + 1))
    return {k: v[start:start + steps] for k, v in rec.items()}


def windows_of(records: Records, steps: int) -> tuple[Records, np.ndarray]:
    """Records cut into consecutive windows of `steps`, and one more ending at the record's end when
    they leave steps over, so every step is read (live reads a clip's last steps too: its last
    window ends there); returns (window records, owner index)."""
    items, arrays, owners = [], [], []
    for i, (it, rec) in enumerate(zip(records.items, records.arrays)):
        n = rec["mask"].shape[0]
        starts = list(range(0, n - steps + 1, steps)) if n > steps else [0]
        if n > steps and starts[-1] != n - steps:
            starts.append(n - steps)
        for s in starts:
            items.append(it)
            arrays.append({k: v[s:s + steps] for k, v in rec.items()})
            owners.append(i)
    targets = records.targets[np.array(owners, dtype=np.int64)] if owners else records.targets[:0]
    return Records(items, arrays, targets), np.array(owners, dtype=np.int64)


def voice_stats(rec: dict[str, np.ndarray]) -> BandStats:
    """A record's contribution to its person's voice baseline (its speech steps)."""
    if "voice" not in rec:
        return BandStats()
    return BandStats.of(rec["voice"], rec["speech_prob"] * (rec["mask"][:, VOICE] > 0))


class PersonBaselines:
    """Each record's person baseline (perception/baseline.py), built the way it runs live: without labels.

    In training a record sees a random handful of its person's *other* clips
    (a streamer's baseline is young for the first minute), or with
    probability `none_p` no baseline at all, as the live engine does before
    the person has spoken. In evaluation it sees all of its person's clips,
    itself included, as a live baseline includes what is being said.
    """

    def __init__(self, records: Records, prior: Prior, none_p: float = 0.25,
                 people_from: Records | None = None) -> None:
        """`people_from`: whole clips to build evaluation baselines from when `records` are windows of them."""
        self.prior, self.none_p = prior, none_p
        self.stats = [voice_stats(r) for r in records.arrays]
        self.people: dict[str, list[int]] = {}
        for i, it in enumerate(records.items):
            if self.stats[i].n > 0:
                self.people.setdefault(it.group, []).append(i)
        self.groups = [it.group for it in records.items]
        whole = people_from or records
        stats = self.stats if people_from is None else [voice_stats(r) for r in whole.arrays]
        self.totals: dict[str, BandStats] = {}
        for it, st in zip(whole.items, stats):
            self.totals[it.group] = self.totals.get(it.group, BandStats()) + st

    def of(self, i: int, rng: np.random.Generator | None) -> BandStats:
        if rng is None:
            return self.totals.get(self.groups[i], BandStats())
        others = [j for j in self.people.get(self.groups[i], []) if j != i]
        if not others or rng.random() < self.none_p:
            return BandStats()
        pick = rng.choice(others, size=int(rng.integers(1, len(others) + 1)), replace=False)
        return sum((self.stats[j] for j in pick), BandStats())

    def normalise(self, x: np.ndarray, i: int, rng: np.random.Generator | None) -> np.ndarray:
        return apply_baseline(x, self.prior, self.of(i, rng))


class StepDataset(Dataset):
    def __init__(self, records: Records, modalities: Sequence[str], steps: int, train: bool,
                 augment: bool = True, image_steps: int = 1, seed: int = 0,
                 key_segments: int | None = None, face_erase: float = 0.0, voice_eq: float = 0.0,
                 voice_room: float = 0.0, baselines: PersonBaselines | None = None) -> None:
        self.records, self.modalities, self.steps = records, list(modalities), steps
        self.train, self.augment, self.image_steps, self.seed = train, augment, image_steps, seed
        self.key_segments, self.face_erase, self.voice_eq = key_segments, face_erase, voice_eq
        self.voice_room, self.baselines = voice_room, baselines
        # In shared memory: DataLoader workers hold their own copy of the
        # dataset (persistent ones for the whole run), and a plain attribute
        # set in the main process never reaches them, so every epoch would
        # replay epoch 0's augmentations and pairs.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(epoch)

    def __len__(self) -> int:
        return len(self.records)

    def _rng(self, i: int) -> np.random.Generator | None:
        # Seeded per (epoch, index): the same run gives the same augmentations
        # whatever the worker count or DDP rank that draws the sample.
        return np.random.default_rng((self.seed, self.epoch, i)) if self.train else None

    def sample(self, rec: dict[str, np.ndarray], rng: np.random.Generator | None,
               index: int | None = None) -> dict[str, np.ndarray]:
        """A window of record `index` (whose person baseline applies, when the dataset has them)."""
        w = window(rec, self.steps, rng, self.image_steps)
        out = {"mask": w["mask"].astype(np.float32)}
        if self.key_segments and "speech_prob" in w:
            # Per window, as live: only the k most salient speech steps keep their voice.
            from obs_merlb.perception.voice import key_segment_mask
            keep = key_segment_mask(w["speech_prob"].astype(np.float32), w["energy"].astype(np.float32),
                                    k=self.key_segments)
            out["mask"][:, VOICE] *= np.asarray(keep, np.float32)
        for m in self.modalities:
            if m in w:
                x = to_float(m, w[m])
                if m == "voice" and self.baselines is not None and index is not None:
                    x = self.baselines.normalise(x, index, rng)
                if rng is not None and self.augment:
                    x = (augment_face(x, rng, self.face_erase) if m == "face"
                         else augment_voice(x, rng, eq=self.voice_eq, room=self.voice_room) if m == "voice" else x)
                out[m] = np.ascontiguousarray(x)
        return out

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        out = self.sample(self.records.arrays[i], self._rng(i), i)
        out["y"] = self.records.targets[i]
        out["q"] = self.records.emotion_q[i]
        out["allowed"] = self.records.emotion_allowed[i]
        return out


class PairedDataset(StepDataset):
    """Face sample + voice clip of the same emotion, from different people (see module doc).

    With ``mismatch`` > 0 that share of pairs takes a voice of another
    emotion, labelled by the face.
    """

    def __init__(self, records: Records, modalities: Sequence[str], steps: int, train: bool,
                 n_pairs: int = 0, augment: bool = True, seed: int = 0,
                 key_segments: int | None = None, mismatch: float = 0.0, face_erase: float = 0.0,
                 voice_eq: float = 0.0, voice_room: float = 0.0, baselines: PersonBaselines | None = None) -> None:
        super().__init__(records, modalities, steps, train, augment, 1, seed, key_segments, face_erase, voice_eq,
                         voice_room, baselines)
        self.mismatch = mismatch
        masks = [r["mask"].any(axis=0) for r in records.arrays]
        emo = records.targets[:, HEADS.index("emotion")]
        self.faces = [i for i, m in enumerate(masks) if m[FACE] and not m[VOICE] and emo[i] >= 0]
        self.voices: dict[int, list[int]] = {}
        for i, m in enumerate(masks):
            if m[VOICE] and not m[FACE] and emo[i] >= 0:
                self.voices.setdefault(int(emo[i]), []).append(i)
        self.faces = [i for i in self.faces if int(emo[i]) in self.voices]
        self.n_pairs = n_pairs or min(len(self.faces), sum(len(v) for v in self.voices.values()))
        if not self.faces:
            self.n_pairs = 0

    def pair(self, i: int) -> tuple[int, int]:
        rng = np.random.default_rng((self.seed, self.epoch if self.train else 0, i, 7))
        f = self.faces[int(rng.integers(len(self.faces)))]
        emo = int(self.records.targets[f, HEADS.index("emotion")])
        others = [e for e in self.voices if e != emo]
        if others and rng.random() < self.mismatch:
            emo = others[int(rng.integers(len(others)))]
        group = self.records.items[f].group
        pool = [v for v in self.voices[emo] if self.records.items[v].group != group] or self.voices[emo]
        return f, pool[int(rng.integers(len(pool)))]

    def __len__(self) -> int:
        return self.n_pairs

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        f, v = self.pair(i)
        rng = self._rng(i)
        voice = self.sample(self.records.arrays[v], rng, v)
        t = voice["mask"].shape[0]
        face = self.sample(window(self.records.arrays[f], t, rng, image_steps=t), rng)
        out = {"mask": voice["mask"].copy()}
        out["mask"][:, FACE] = face["mask"][:t, FACE]
        for m, src in (("face", face), ("voice", voice)):
            if m in src:
                out[m] = src[m][:t]
        yf, yv = self.records.targets[f], self.records.targets[v]
        if yf[HEADS.index("emotion")] != yv[HEADS.index("emotion")]:
            # A disagreeing pair (`mismatch`) is labelled by the face: see
            # TrainConfig.pair_mismatch for why the face wins. Modality
            # dropout must not take that face away (MERLB.modality_dropout).
            out["y"] = yf.copy()
            out["q"] = self.records.emotion_q[f]
            out["allowed"] = self.records.emotion_allowed[f]
            out["keep"] = np.zeros(len(MODALITIES), np.float32)
            out["keep"][FACE] = 1.0
        else:
            # A head counts only where both sides say the same (valence/arousal
            # tables differ between sets for a few emotions).
            out["y"] = np.where(yf == yv, yf, IGNORE)
            # Both sides are evidence: the face's votes (or label) and the voice's label.
            out["q"] = (self.records.emotion_q[f] + self.records.emotion_q[v]) / 2
            out["allowed"] = self.records.emotion_allowed[f] | self.records.emotion_allowed[v]
        return out


def collate(batch: list[dict[str, np.ndarray]], modalities: Sequence[str]) -> dict[str, torch.Tensor | None]:
    """Pad to the longest window; a modality absent from the whole batch is None."""
    b = len(batch)
    t = max(s["mask"].shape[0] for s in batch)
    mask = torch.zeros(b, t, len(MODALITIES))
    out: dict[str, torch.Tensor | None] = {}
    for m in modalities:
        shapes = [s[m].shape[1:] for s in batch if m in s]
        if not shapes:
            out[m] = None
            continue
        x = torch.zeros(b, t, *shapes[0])
        for i, s in enumerate(batch):
            if m in s:
                x[i, : s[m].shape[0]] = torch.from_numpy(s[m])
        out[m] = x
    for i, s in enumerate(batch):
        mask[i, : s["mask"].shape[0]] = torch.from_numpy(s["mask"])
    out["mask"] = mask
    out["y"] = torch.from_numpy(np.stack([s["y"] for s in batch]).astype(np.int64))
    out["q"] = torch.from_numpy(np.stack([s["q"] for s in batch]).astype(np.float32))
    out["allowed"] = torch.from_numpy(np.stack([s["allowed"] for s in batch]))
    none = np.zeros(len(MODALITIES), np.float32)
    out["keep"] = torch.from_numpy(np.stack([s.get("keep", none) for s in batch]))   # modalities never dropped
    return out


class Collate:
    """Picklable collate for DataLoader workers."""

    def __init__(self, modalities: Sequence[str]) -> None:
        self.modalities = list(modalities)

    def __call__(self, batch: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor | None]:
        return collate(batch, self.modalities)


def head_targets(y: torch.Tensor, heads: Sequence[str]) -> dict[str, torch.Tensor]:
    return {h: y[:, HEADS.index(h)] for h in heads}


def voice_band_std(records: Records, max_steps: int = 20000, seed: int = 0) -> np.ndarray | None:
    """Per-mel-band spread of mean-removed log-mel over training voice steps."""
    steps = [r["voice"][r["mask"][:, VOICE] > 0] for r in records.arrays if "voice" in r]
    steps = [s for s in steps if len(s)]
    if not steps:
        return None
    x = np.concatenate(steps).astype(np.float32)
    if len(x) > max_steps:
        x = x[np.random.default_rng(seed).choice(len(x), max_steps, replace=False)]
    x = x - x.mean(axis=(1, 2, 3), keepdims=True)
    return x.transpose(2, 0, 1, 3).reshape(x.shape[2], -1).std(axis=1)


@torch.no_grad()
def predict(model: torch.nn.Module, dataset: Dataset, modalities: Sequence[str], device: torch.device,
            batch_size: int = 128, calibration: Calibration | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Softmax outputs per head and the (N, len(HEADS)) targets, in dataset order.

    With a calibration, each window's logits are temperature-scaled for the
    modality set it holds, as the live backend does.
    """
    from torch.utils.data import DataLoader

    calibration = calibration or Calibration()      # none: T = 1, the plain softmax
    model.eval()
    probs: dict[str, list[np.ndarray]] = {}
    ys = []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=Collate(modalities))
    for batch in loader:
        inputs = {m: (batch.get(m).to(device) if batch.get(m) is not None else None) for m in MODALITIES}
        logits = model(inputs["face"], inputs["voice"], inputs["body"], inputs["scene"], batch["mask"].to(device))
        sets = modality_sets(batch["mask"].numpy(), modalities)
        for h, lg in logits.items():
            probs.setdefault(h, []).append(calibration.probs(h, lg.float().cpu().numpy(), sets))
        ys.append(batch["y"].numpy())
    return ({h: np.concatenate(v) for h, v in probs.items()},
            np.concatenate(ys) if ys else np.zeros((0, len(HEADS)), np.int64))


def class_names(head: str) -> tuple[str, ...]:
    return HEAD_CLASSES[head]
