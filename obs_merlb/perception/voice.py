"""Voice: log-mel per step, silero-vad speech probability, key-segment selection.

The log-mel follows docs/ARCHITECTURE.md: 16 kHz mono, 64 mel bands (HTK
mel scale, 0-8 kHz, triangular filters without area normalisation, as
torchaudio's MelSpectrogram defaults), n_fft 400 with a periodic Hann
window, hop 160, power spectrum, ``log(mel + 1e-6)``. One step's feature is
the 1.0 s of audio *ending* at the step's end: 100 frames whose last frame
ends exactly at that end, so it uses no audio from the future (live and
offline see the same samples). The 240 samples before the second that the
first frame reaches back into are taken when they exist, zeros otherwise.

The log-mel's 25 ms frames do not resolve a low voice's harmonics, so a
step also carries its pitch track (`pitch_track`): for each of the newest
`PITCH_FRAMES` log-mel frames, the fundamental (YIN, de Cheveigné & Kawahara
2002, on the audio at 8 kHz) and how aperiodic the frame is. The voice
reader reads it against the person (perception/functionals.py).
"""
from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

import numpy as np

from obs_merlb.capture.base import SAMPLE_RATE   # what every audio source delivers

N_MELS = 64
N_FFT = 400
HOP = 160
N_FRAMES = 100
WINDOW_S = 1.0
WINDOW = int(WINDOW_S * SAMPLE_RATE)            # 16000 samples: 100 hops
CONTEXT = N_FFT - HOP                            # 240 samples before the window
NEEDED = WINDOW + CONTEXT                        # samples a step's feature reads
LOG_EPS = 1e-6
VAD_CHUNK = 512                                  # silero-vad's frame at 16 kHz
VAD_CONTEXT = 64
SPEECH_THRESHOLD = 0.5
PITCH_FRAMES = 25                                # the newest 0.25 s of log-mel frames (one step)
PITCH_SR = 8000                                  # YIN runs at half rate: voices stay under 4 kHz
PITCH_WIN = 320                                  # 40 ms at 8 kHz: two periods of a 50 Hz voice
PITCH_LAGS = (20, 160)                           # periods of 400 Hz .. 50 Hz at 8 kHz
PITCH_REF_HZ = 55.0                              # pitch in semitones above A1
PITCH_NFFT = 512                                 # >= window + longest lag: no wrap-around in the lags read
YIN_THRESHOLD = 0.15                             # YIN's absolute threshold for the first dip


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + f / 700.0)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def mel_filterbank(n_mels: int = N_MELS, n_fft: int = N_FFT, sr: int = SAMPLE_RATE,
                   f_min: float = 0.0, f_max: float | None = None) -> np.ndarray:
    """(n_fft//2+1, n_mels) triangular filters on the HTK mel scale."""
    f_max = sr / 2 if f_max is None else f_max
    freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    m_pts = np.linspace(_hz_to_mel(np.array(f_min)), _hz_to_mel(np.array(f_max)), n_mels + 2)
    f_pts = _mel_to_hz(m_pts)
    diff = np.diff(f_pts)
    slopes = f_pts[None, :] - freqs[:, None]                 # (n_freqs, n_mels+2)
    down = -slopes[:, :-2] / diff[:-1]
    up = slopes[:, 2:] / diff[1:]
    return np.maximum(0.0, np.minimum(down, up)).astype(np.float32)


_FB = mel_filterbank()
# 16 -> 8 kHz anti-alias filter: 31-tap Hann-windowed sinc, cut at 3.6 kHz, unit gain at DC.
_HALF_BAND = np.sinc(0.9 * np.arange(-15, 16) / 2) * np.hanning(33)[1:-1]
_HALF_BAND /= _HALF_BAND.sum()
_HANN = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)).astype(np.float32)


def window_ending(audio: np.ndarray, end: int) -> np.ndarray:
    """The NEEDED samples ending at index ``end`` (zeros outside the signal)."""
    start = end - NEEDED
    out = np.zeros(NEEDED, dtype=np.float32)
    lo, hi = max(start, 0), min(end, len(audio))
    if hi > lo:
        out[lo - start:hi - start] = audio[lo:hi]
    return out


def log_mel(window: np.ndarray) -> np.ndarray:
    """(NEEDED,) or (WINDOW,) samples -> (1, 64, 100) float32 log-mel.

    Given exactly 1.0 s (no 240-sample lead-in), zeros stand in for it, as
    at the very start of a stream.
    """
    x = np.asarray(window, dtype=np.float32).reshape(-1)
    if len(x) == WINDOW:
        x = np.concatenate([np.zeros(CONTEXT, dtype=np.float32), x])
    if len(x) != NEEDED:
        raise ValueError(f"log_mel wants {WINDOW} or {NEEDED} samples at 16 kHz, got {len(x)}")
    frames = np.lib.stride_tricks.sliding_window_view(x, N_FFT)[::HOP]   # (100, 400)
    spec = np.fft.rfft(frames * _HANN, axis=1)
    power = (spec.real ** 2 + spec.imag ** 2).astype(np.float32)
    mel = power @ _FB                                                    # (100, 64)
    return np.log(mel.T + LOG_EPS)[None].astype(np.float32)


def pitch_track(window: np.ndarray) -> np.ndarray:
    """(NEEDED,) samples -> (2, PITCH_FRAMES) float32: per newest log-mel frame (each ending where
    that frame ends), the pitch in semitones above PITCH_REF_HZ and YIN's aperiodicity (its
    cumulative-mean-normalised difference at the chosen period: ~0 for a clean periodic voice,
    ~1 for noise or silence).
    """
    x = np.asarray(window, dtype=np.float32).reshape(-1)
    lo, hi = PITCH_LAGS
    span = PITCH_WIN + hi                                   # samples one frame's lags read, at 8 kHz
    step = SAMPLE_RATE // PITCH_SR
    hop = HOP // step
    need = span + (PITCH_FRAMES - 1) * hop
    # Half rate: a low-pass FIR, then every other sample, ending on the window's last sample.
    low = np.convolve(x[-(step * need + len(_HALF_BAND) - 1):].astype(np.float64), _HALF_BAND, mode="valid")
    x8 = low[(len(low) - 1) % step::step][-need:]
    ends = len(x8) - hop * np.arange(PITCH_FRAMES)[::-1]
    frames = x8[(ends - span)[:, None] + np.arange(span)[None]]          # (F, span): window then lag room
    head = frames[:, :PITCH_WIN]
    corr = np.fft.irfft(np.fft.rfft(frames, PITCH_NFFT) * np.fft.rfft(head[:, ::-1], PITCH_NFFT),
                        PITCH_NFFT)[:, PITCH_WIN - 1:PITCH_WIN + hi]     # sum_t head[t] x[t + lag], lag 0..hi
    energy = np.cumsum(np.pad(frames ** 2, ((0, 0), (1, 0))), axis=1)
    lags = np.arange(hi + 1)
    diff = energy[:, PITCH_WIN:PITCH_WIN + 1] + energy[:, PITCH_WIN + lags] - energy[:, lags] - 2 * corr
    diff = np.maximum(diff[:, 1:], 0.0)                                  # lags 1..hi
    cmnd = diff * lags[1:] / np.maximum(np.cumsum(diff, axis=1), 1e-12)
    cmnd[np.cumsum(diff, axis=1) <= 1e-12] = 1.0                         # silence: no period at all
    c = cmnd[:, lo - 1:]
    # YIN's rule: the first dip under the threshold (else the deepest), followed to its bottom.
    below = c < YIN_THRESHOLD
    k = np.where(below.any(axis=1), below.argmax(axis=1), c.argmin(axis=1))
    rows = np.arange(len(c))
    cols = np.arange(c.shape[1] - 1)
    rising = (c[:, 1:] >= c[:, :-1]) & (cols[None] >= k[:, None])
    k = np.where(rising.any(axis=1), rising.argmax(axis=1), c.shape[1] - 1)
    # A parabola through the dip and its neighbours places the period between lags.
    left, mid, right = c[rows, np.maximum(k - 1, 0)], c[rows, k], c[rows, np.minimum(k + 1, c.shape[1] - 1)]
    curve = left - 2 * mid + right
    shift = np.where(curve > 1e-9, 0.5 * (left - right) / np.where(curve > 1e-9, curve, 1.0), 0.0)
    period = k + lo + np.clip(shift, -0.5, 0.5)
    semitones = 12.0 * np.log2(PITCH_SR / period / PITCH_REF_HZ)
    return np.stack([semitones, np.clip(mid, 0.0, 1.0)]).astype(np.float32)


def step_window(audio: np.ndarray, step_end_s: float, audio_t0: float = 0.0) -> np.ndarray:
    """The samples a step ending at ``step_end_s`` reads; ``audio[0]`` is at ``audio_t0``."""
    end = int(round((step_end_s - audio_t0) * SAMPLE_RATE))
    return window_ending(audio, end)


def rms(window: np.ndarray) -> float:
    """RMS of the last 1.0 s (the lead-in belongs to the previous second)."""
    x = np.asarray(window, dtype=np.float32)[-WINDOW:]
    return float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) if len(x) else 0.0


def _silero_data() -> Path:
    """silero-vad's model folder, found without importing the package: its
    __init__ imports torch (seconds, and memory the worker does not need)."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("voice activity detection needs the silero-vad package: "
                           "pip install silero-vad")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


class VAD:
    """silero-vad through onnxruntime, from the model files in its wheel
(no torch, no download).

    Speech probability of a 1.0 s window: the model runs over the window's
    31 chunks of 32 ms from a fresh state (so a step's value does not depend
    on what came before: the same offline and live, whatever the frame
    rate), and the window scores the mean of its 3 highest chunks, which
    needs ~0.1 s of speech and ignores a single-chunk click.
    """

    def __init__(self, threads: int = 1) -> None:
        import onnxruntime as ort

        data = _silero_data()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        # The "ifless" export gives the same probabilities (within 1e-7) as
        # silero_vad.onnx, whose If-branches make onnxruntime's full graph
        # optimisation take ~8 s at load; older wheels lack it, and then the
        # main model loads with basic optimisation (0.2 s).
        ifless = data / "silero_vad_op18_ifless.onnx"
        if ifless.exists():
            path = ifless
        else:
            path = data / "silero_vad.onnx"
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        self._sess = ort.InferenceSession(str(path), sess_options=opts,
                                          providers=["CPUExecutionProvider"])
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)
        self._lock = threading.Lock()

    def chunk_probs(self, audio: np.ndarray) -> np.ndarray:
        """Per-32 ms speech probabilities over ``audio``, newest chunk last.

        ``audio`` (B, N) runs B windows in one batch (offline), giving (B, n).
        """
        x = np.asarray(audio, dtype=np.float32)
        rows = x.reshape(-1, x.shape[-1]) if x.ndim > 1 else x.reshape(1, -1)
        n = rows.shape[1] // VAD_CHUNK
        if n == 0:
            return np.zeros((len(rows), 0) if x.ndim > 1 else 0, dtype=np.float32)
        rows = rows[:, rows.shape[1] - n * VAD_CHUNK:]
        state = np.zeros((2, len(rows), 128), dtype=np.float32)
        ctx = np.zeros((len(rows), VAD_CONTEXT), dtype=np.float32)
        out = np.empty((len(rows), n), dtype=np.float32)
        with self._lock:
            if self._sess is None:
                raise RuntimeError("VAD is closed")
            for i in range(n):
                inp = np.concatenate([ctx, rows[:, i * VAD_CHUNK:(i + 1) * VAD_CHUNK]], axis=1)
                p, state = self._sess.run(None, {"input": inp, "state": state, "sr": self._sr})
                out[:, i] = p[:, 0]
                ctx = inp[:, -VAD_CONTEXT:]
        return out if x.ndim > 1 else out[0]

    def speech_prob(self, window: np.ndarray) -> float:
        """Speech probability of the last 1.0 s of ``window``."""
        return float(self.speech_probs(np.asarray(window, dtype=np.float32).reshape(1, -1))[0])

    def speech_probs(self, windows: np.ndarray) -> np.ndarray:
        """`speech_prob` of each row of ``windows`` (B, N), in one batched pass."""
        x = np.asarray(windows, dtype=np.float32)[:, -WINDOW:]
        out = np.zeros(len(x), dtype=np.float32)
        # Digital silence skips the model (a muted mic costs nothing).
        live = np.flatnonzero(np.any(x, axis=1))
        if len(live):
            p = self.chunk_probs(x[live])
            if p.shape[1]:
                out[live] = np.mean(np.sort(p, axis=1)[:, -3:], axis=1)
        return out

    def close(self) -> None:
        with self._lock:
            self._sess = None


def key_segment_mask(speech_prob: np.ndarray, energy: np.ndarray, *,
                     threshold: float = SPEECH_THRESHOLD, k: int | None = None) -> np.ndarray:
    """Voice mask over steps: speech above ``threshold``, then the ``k`` most salient.

    Saliency is speech probability x RMS energy: of the steps that hold
    speech, the loud, clearly voiced ones carry the most emotion (a shout, a
    laugh) and a murmur under game noise the least. Ties keep the earlier step.
    """
    p = np.asarray(speech_prob, dtype=np.float32)
    keep = p >= threshold
    if k is not None and k >= 0 and keep.sum() > k:
        sal = np.where(keep, p * np.asarray(energy, dtype=np.float32), -np.inf)
        order = np.argsort(-sal, kind="stable")[:k]
        keep = np.zeros_like(keep)
        keep[order] = True
    return keep.astype(np.float32)
