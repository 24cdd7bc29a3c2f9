"""Perception on real data: face crops on the CREMA-D face, no face on noise,
log-mel and VAD on real speech and silence, the contract's step arrays, and
train/serve parity (the live analyzer's steps equal `merlb preprocess`'s)."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from obs_merlb.capture import load_media
from obs_merlb.perception import Perceiver, Steps, clip_steps
from obs_merlb.perception import voice as V
from obs_merlb.perception.scene import thumbnail
from obs_merlb.perception.functionals import VOICED as V_VOICED

from media import FIX, av_clip  # tests/media.py (pytest puts tests/ on sys.path)


@pytest.fixture(scope="module")
def media():
    return load_media(av_clip(), fps=8, end=3.0)


@pytest.fixture(scope="module")
def perceiver():
    p = Perceiver(face=True, voice=True, body=True, scene=False, static=True)
    yield p
    p.close()


def _speech() -> np.ndarray:
    return load_media(FIX / "ravdess" / "03-01-05-01-01-01-01.wav").audio


# --- face ------------------------------------------------------------------

def test_face_found_and_cropped(media, perceiver) -> None:
    img = media.frames[4]
    r = perceiver.face(img)
    assert r is not None
    assert r.crop.shape == (64, 64) and r.crop.dtype == np.float32
    assert 0 <= r.crop.min() and r.crop.max() <= 1 and r.crop.std() > 0.05
    x, y, w, h = r.box
    assert 0 <= x and 0 <= y and x + w <= img.shape[1] and y + h <= img.shape[0]
    assert 50 < w < 300 and 50 < h < 300          # a head-and-shoulders shot, 480x360
    assert r.landmarks.shape == (468, 2)
    assert abs(r.angle) < 10                       # CREMA-D actors face the camera upright


def test_crop_removes_head_roll(media, perceiver) -> None:
    import cv2

    img = media.frames[4]
    h, w = img.shape[:2]
    tilted = cv2.warpAffine(img, cv2.getRotationMatrix2D((w / 2, h / 2), 20, 1.0), (w, h),
                            borderMode=cv2.BORDER_REPLICATE)
    a, b = perceiver.face(img), perceiver.face(tilted)
    assert b is not None and abs((b.angle - a.angle) + 20) < 4   # the 20 degree roll was seen
    # ... and undone: the two crops are nearly the same picture
    assert np.corrcoef(a.crop.ravel(), b.crop.ravel())[0, 1] > 0.9


def test_crop_is_framed_like_fer(media, perceiver) -> None:
    from obs_merlb.perception.face import EYE_MID_X, EYE_MID_Y

    r = perceiver.face(media.frames[4])
    # The mesh found on the crop puts the eyes where FER2013 has them.
    big = np.repeat((r.crop * 255).astype(np.uint8)[:, :, None], 3, axis=2)
    big = np.ascontiguousarray(np.kron(big, np.ones((4, 4, 1), np.uint8)))
    again = perceiver.face(np.pad(big, ((64, 64), (64, 64), (0, 0)), mode="edge"))
    assert again is not None
    eyes = again.landmarks[[33, 133, 362, 263]].mean(axis=0)
    assert abs((eyes[0] - 64) / 256 - EYE_MID_X) < 0.05
    assert abs((eyes[1] - 64) / 256 - EYE_MID_Y) < 0.05


@pytest.mark.parametrize("kind", ["black", "noise"])
def test_no_face_on_black_or_noise(perceiver, kind: str) -> None:
    rng = np.random.default_rng(0)
    img = (np.zeros((360, 480, 3), np.uint8) if kind == "black"
           else rng.integers(0, 256, (360, 480, 3), dtype=np.uint8))
    assert perceiver.face(img) is None
    assert perceiver.body(img) is None


def test_body_pose_on_the_actor(media, perceiver) -> None:
    b = perceiver.body(media.frames[4])
    assert b is not None and b.shape == (132,) and b.dtype == np.float32
    lm = b.reshape(33, 4)
    nose = lm[0]
    assert 0 < nose[0] < 1 and 0 < nose[1] < 1 and nose[3] > 0.5


def test_scene_thumbnail_letterboxed() -> None:
    img = np.full((180, 320, 3), 200, np.uint8)
    t = thumbnail(img)
    assert t.shape == (3, 128, 128) and t.dtype == np.float32
    assert t[:, 0, 64].max() == 0 and t[:, 64, 64].min() > 0.7     # bars top, picture middle
    assert t.max() <= 1.0


# --- voice -----------------------------------------------------------------

def test_mel_filterbank_shape_and_coverage() -> None:
    fb = V.mel_filterbank()
    assert fb.shape == (201, 64) and fb.min() >= 0
    assert np.all(fb.max(axis=0) > 0.25)          # no empty band at 64 mels / n_fft 400
    peaks = fb.argmax(axis=0)
    assert np.all(np.diff(peaks) >= 0)


def test_log_mel_contract_and_tone_lands_in_its_band() -> None:
    t = np.arange(V.NEEDED) / 16000
    x = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    m = V.log_mel(x)
    assert m.shape == (1, 64, 100) and m.dtype == np.float32
    band = int(np.argmax(m[0].mean(axis=1)))
    mel_1k = V._hz_to_mel(np.array(1000.0)) / V._hz_to_mel(np.array(8000.0)) * 65 - 1
    assert abs(band - mel_1k) <= 1
    silent = V.log_mel(np.zeros(V.WINDOW, np.float32))
    assert np.allclose(silent, np.log(1e-6))


def test_log_mel_uses_no_future_audio() -> None:
    a = np.random.default_rng(1).standard_normal(48000).astype(np.float32) * 0.1
    end_s = 2.0
    x1 = V.step_window(a, end_s)
    b = a.copy()
    b[32000:] = 0                                 # change everything after the step's end
    assert np.array_equal(V.log_mel(x1), V.log_mel(V.step_window(b, end_s)))


def test_vad_silence_noise_and_speech(perceiver) -> None:
    silence = perceiver.voice_step(np.zeros(16000, np.float32))
    assert not silence.present and silence.speech_prob == 0 and not silence.feature.any()
    noise = perceiver.voice_step(np.random.default_rng(2).standard_normal(16240).astype(np.float32) * 0.01)
    assert noise.speech_prob < 0.3 and not noise.present
    a = _speech()
    speech = perceiver.voice_step(a[:int(1.8 * 16000)])    # RAVDESS: speech ~1.0-2.0 s
    assert speech.present and speech.speech_prob > 0.8 and speech.feature.shape == (1, 64, 100)
    # A speech step carries its pitch track, a step without speech none (zeros, never read).
    window = V.window_ending(a[:int(1.8 * 16000)], int(1.8 * 16000))
    assert np.array_equal(speech.pitch, V.pitch_track(window)) and (speech.pitch[1] < V_VOICED).any()
    assert not silence.pitch.any() and not noise.pitch.any()


def test_key_segments_keep_the_most_salient() -> None:
    p = np.array([0.9, 0.2, 0.95, 0.7, 0.99, 0.6], np.float32)
    e = np.array([0.1, 0.9, 0.05, 0.3, 0.2, 0.01], np.float32)
    assert V.key_segment_mask(p, e).tolist() == [1, 0, 1, 1, 1, 1]
    # saliency p*e: 0.09, -, 0.0475, 0.21, 0.198, 0.006 -> top 2 are steps 3 and 4
    assert V.key_segment_mask(p, e, k=2).tolist() == [0, 0, 0, 1, 1, 0]
    assert V.key_segment_mask(p, e, k=10).tolist() == [1, 0, 1, 1, 1, 1]


# --- steps -----------------------------------------------------------------

def _check_contract(s: Steps, T: int) -> None:
    assert s.face.shape == (T, 1, 64, 64)
    assert s.voice.shape == (T, 1, 64, 100)
    assert s.body.shape == (T, 132)
    assert s.scene.shape == (T, 3, 128, 128)
    assert s.mask.shape == (T, 4) and s.times.shape == (T,)
    for a in (s.face, s.voice, s.body, s.scene, s.mask):
        assert a.dtype == np.float32
    assert set(np.unique(s.mask)) <= {0.0, 1.0}
    # missing steps carry zeros
    for k, a in enumerate((s.face, s.voice, s.body, s.scene)):
        assert not a[s.mask[:, k] == 0].any()


def test_window_steps_from_frames_and_audio(media, perceiver) -> None:
    s = perceiver.steps(media.frames, media.times, media.audio, t0=0.5, T=8)
    _check_contract(s, 8)
    assert np.allclose(s.times, 0.5 + 0.25 * np.arange(8))
    assert s.mask[:, 0].all() and s.mask[:, 2].all()   # face and body on every step
    assert s.mask[:, 1].sum() >= 4                     # the actor speaks through most of it
    assert not s.mask[:, 3].any()                      # no game source: scene missing
    scene = Perceiver.scene(media.frames[0])
    assert scene.shape == (3, 128, 128)


def test_window_without_frames_or_with_silence(perceiver) -> None:
    s = perceiver.steps([], [], np.zeros(48000, np.float32), T=8)
    _check_contract(s, 8)
    assert not s.mask.any()


def test_clip_steps_on_the_av_clip() -> None:
    s = clip_steps(av_clip(), body=False)
    n = int(np.floor(load_media(av_clip(), video=False).duration / 0.25 + 1e-6))
    _check_contract(s, len(s))
    assert abs(len(s) - n) <= 1
    assert s.mask[:, 0].mean() > 0.95              # the face is in view throughout
    assert 0.5 < s.mask[:, 1].mean() < 1.0         # speech with pauses between sentences
    assert not s.mask[:, 2].any() and not s.mask[:, 3].any()   # not asked for
    w = s.window(len(s) - 3, 8, key_segments=2)    # runs past the end: padded
    _check_contract(w, 8)
    assert w.mask[3:].sum() == 0 and w.mask[:, 1].sum() <= 2


def test_clip_steps_audio_only_and_silent_video(tmp_path: Path) -> None:
    s = clip_steps(FIX / "emodb" / "03a01Wa.wav")
    _check_contract(s, len(s))
    assert len(s) == 8 and not s.mask[:, 0].any() and s.mask[:, 1].sum() >= 3
    import av

    p = tmp_path / "quiet.mkv"                     # a video whose audio track is silent
    with av.open(str(p), "w") as out:
        vs = out.add_stream("mpeg4", rate=10)
        vs.width, vs.height, vs.pix_fmt = 64, 48, "yuv420p"
        a = out.add_stream("pcm_s16le", rate=16000)
        a.layout = "mono"
        for i in range(20):
            f = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
            f.pts = i
            for pk in vs.encode(f):
                out.mux(pk)
        for pk in vs.encode():
            out.mux(pk)
        af = av.AudioFrame.from_ndarray(np.zeros((1, 32000), np.int16), format="s16", layout="mono")
        af.sample_rate, af.pts = 16000, 0
        for pk in a.encode(af):
            out.mux(pk)
        for pk in a.encode():
            out.mux(pk)
    s = clip_steps(p)
    _check_contract(s, len(s))
    assert len(s) == 8 and not s.mask.any()


class _TapBackend:
    """Encoders that return their input, so the analyzer's ring of step
    embeddings holds the per-step arrays themselves; the sequence model
    answers uniform probabilities (what it says does not matter here)."""

    def __init__(self) -> None:
        from obs_merlb.labels import AROUSAL, EMOTIONS, VALENCE

        dims = {"face": 64 * 64, "voice": V.N_MELS * V.N_FRAMES}
        self.cfg = SimpleNamespace(steps=8, step_s=0.25, voice_key_segments=None, embed_dims=dims)
        self.modalities = ["face", "voice"]
        self.labels = {"emotion": list(EMOTIONS), "valence": list(VALENCE), "arousal": list(AROUSAL)}

    def encode(self, modality: str, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, np.float32).reshape(len(x), -1).copy()

    def sequence(self, embs: dict, mask: np.ndarray) -> dict[str, np.ndarray]:
        return {h: np.full(len(c), 1.0 / len(c)) for h, c in self.labels.items()}


def _live_steps(path: Path, n: int) -> dict[str, np.ndarray]:
    """Per-step arrays and masks as `merlb live`'s analyzer builds them on a
    file (iter_file_ticks, the path of `merlb analyze` and Engine.run_file),
    at a rate above the file's frame rate so every frame is analysed."""
    from obs_merlb.analyzer import Analyzer, StepRing, iter_file_ticks

    kept: dict[str, dict[int, np.ndarray | None]] = {"face": {}, "voice": {}}
    speech: dict[int, float] = {}

    class TapRing(StepRing):
        def put(self, modality: str, k: int, emb: np.ndarray | None) -> None:
            kept[modality][k] = None if emb is None else emb.copy()
            if modality == "voice":
                speech[k] = float(self.speech_prob[k % self.T])
            super().put(modality, k, emb)

    # Live's two shortcuts off (see Analyzer): the face mesh detects afresh
    # on every frame and runs on every frame, as preprocessing does.
    analyzer = Analyzer(_TapBackend(), body=False, contributions=False, static_perception=True,
                        reuse_unchanged=False)
    analyzer.ring = TapRing(analyzer.T, analyzer.backend.cfg.embed_dims)
    pitch: dict[int, np.ndarray] = {}
    voice_step = analyzer._voice_step

    def tap_voice_step(k: int, window: np.ndarray):
        step, emb = voice_step(k, window)
        pitch[k] = step.pitch.copy()
        return step, emb

    analyzer._voice_step = tap_voice_step
    try:
        for _ in iter_file_ticks(analyzer, str(path), rate=60.0):
            pass
    finally:
        analyzer.close()
    shapes = {"face": (1, 64, 64), "voice": (1, V.N_MELS, V.N_FRAMES)}
    out = {"mask": np.zeros((n, 4), np.float32), "voice_done": np.zeros(n, bool),
           "speech_prob": np.zeros(n, np.float32), "pitch": np.zeros((n, 2, V.PITCH_FRAMES), np.float32)}
    for j, m in enumerate(("face", "voice")):
        out[m] = np.zeros((n, *shapes[m]), np.float32)
        for k, arr in kept[m].items():
            if 0 <= k < n and arr is not None:
                out[m][k] = arr.reshape(shapes[m])
                out["mask"][k, j] = 1
    for k, p in speech.items():
        if 0 <= k < n:
            out["voice_done"][k] = True
            out["speech_prob"][k] = p
            out["pitch"][k] = pitch[k]
    return out


def test_live_analyzer_and_preprocess_parity(tmp_path: Path) -> None:
    """Train/serve parity: the same clip through `merlb live`'s analyzer and
    through `merlb preprocess` gives identical face crops, voice log-mels and
    masks at every step (as the cache stores them: uint8 faces, float16
    log-mels)."""
    from obs_merlb.train import preprocess as P

    clip = av_clip()
    table = tmp_path / "clip.csv"
    table.write_text(f"path,label\n{clip},happy\n")
    prep = P.prepare(table, tmp_path / "cache", workers=1, quiet=True)
    assert len(prep.items) == 1 and not prep.failed
    cached = P.read_shard(prep.shards[0])    # one item: the shard's arrays are its steps
    n = len(cached["mask"])
    live = _live_steps(clip, n)

    assert live["mask"][:, 0].sum() > 0.9 * n and live["mask"][:, 1].sum() > 0.3 * n   # face and speech seen
    assert np.array_equal(live["mask"][:, 0], cached["mask"][:, 0])
    assert np.array_equal(P.stored("face", live["face"]), cached["face"])
    # Live computes a step's voice once the audio past its end has arrived:
    # every step but the clip's last few.
    done = live["voice_done"]
    assert done[:n - 4].all()
    assert np.array_equal(live["mask"][done, 1], cached["mask"][done, 1])
    assert np.array_equal(P.stored("voice", live["voice"][done]), cached["voice"][done])
    assert np.array_equal(live["speech_prob"][done].astype(np.float16), cached["speech_prob"][done])
    assert np.array_equal(live["pitch"][done].astype(np.float16), cached["pitch"][done])
    assert live["pitch"][done & (live["mask"][:, 1] > 0), 1].min() < 0.2     # the speech has voiced frames


def test_segment_steps_match_the_whole_clip(perceiver) -> None:
    """A CSV row's segment (start/end) gives the same steps as the same
    stretch of the whole clip: the voice reads the second before start."""
    whole = clip_steps(av_clip(), end=2.0, body=False)
    part = clip_steps(av_clip(), start=1.0, end=2.0, body=False)
    assert len(part) == 4 and np.allclose(part.times, [1.0, 1.25, 1.5, 1.75])
    assert np.array_equal(part.mask, whole.mask[4:8])
    assert np.allclose(part.face, whole.face[4:8], atol=1e-6)
    assert np.allclose(part.voice, whole.voice[4:8], atol=1e-3)


def test_batched_offline_analysis_equals_live() -> None:
    """`merlb analyze`'s batched, pipelined run (obs_merlb/offline.py) gives the
    live analyzer's events, tick for tick, on the demo clip with the shipped model."""
    from obs_merlb.analyzer import Analyzer, iter_file_ticks
    from obs_merlb.inference import load_backend
    from obs_merlb.offline import BatchedAnalyzer, iter_ticks
    from obs_merlb.state import StateTracker

    model = Path(__file__).resolve().parents[1] / "assets" / "model"
    if not (model / "config.json").is_file():
        pytest.skip("no shipped model in assets/model")
    backend = load_backend(model)
    live_an = Analyzer(backend, StateTracker())
    try:
        live = [r.event for r, _ in iter_file_ticks(live_an, str(av_clip()), 15.0)]
    finally:
        live_an.close()
    batched_an = BatchedAnalyzer(backend, StateTracker())
    try:
        ticks = list(iter_ticks(batched_an, str(av_clip()), 15.0))
    finally:
        batched_an.close()
    offline = [tick.result.event for tick in ticks]
    assert len(offline) == len(live) > 150
    for a, b in zip(live, offline):
        assert a["t"] == b["t"] and a["label"] == b["label"]
        assert (a["face_present"], a["speech"], a["visible"]) == (b["face_present"], b["speech"], b["visible"])
        for key in ("probs", "valence", "arousal", "contributions"):
            assert a[key].keys() == b[key].keys()
            assert np.allclose(list(a[key].values()), list(b[key].values()), atol=1e-5), key
