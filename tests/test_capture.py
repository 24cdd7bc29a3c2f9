"""Capture sources on real files: sync, missing tracks, damaged files, rings,
camera, OBS screenshots (no OBS here: decoding and error mapping only; the
real-OBS tests live with the OBS integration) and the microphone (mocked:
see its tests)."""
from __future__ import annotations

import base64
import shutil
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from obs_merlb.capture import (AudioChunk, AudioRing, FileSource, LatestSlot, MediaError,
                               VideoFrame, iter_media, load_media, probe)

from media import FIX, av_clip  # tests/media.py (pytest puts tests/ on sys.path)


def make_clip(path: Path, *, seconds: float = 2.0, fps: int = 25, event_s: float = 1.0,
              video: bool = True, audio: bool = True, sr: int = 44100) -> Path:
    """An mp4 that is dark and silent except for a white flash and a tone
    burst both starting at ``event_s``: the test of whether they decode in sync."""
    import av

    with av.open(str(path), "w") as out:
        vs = out.add_stream("mpeg4", rate=fps) if video else None
        if vs is not None:
            vs.width, vs.height, vs.pix_fmt = 160, 120, "yuv420p"
        as_ = out.add_stream("aac", rate=sr) if audio else None
        if as_ is not None:
            as_.layout = "mono"
        if vs is not None:
            for i in range(int(seconds * fps)):
                on = event_s <= i / fps < event_s + 0.2
                img = np.full((120, 160, 3), 230 if on else 20, np.uint8)
                f = av.VideoFrame.from_ndarray(img, format="rgb24")
                f.pts, f.time_base = i, Fraction(1, fps)
                for p in vs.encode(f):
                    out.mux(p)
            for p in vs.encode():
                out.mux(p)
        if as_ is not None:
            n = int(seconds * sr)
            t = np.arange(n) / sr
            x = np.where((t >= event_s) & (t < event_s + 0.2), 0.5 * np.sin(2 * np.pi * 880 * t), 0)
            x = x.astype(np.float32)
            for k in range(0, n, 1024):
                f = av.AudioFrame.from_ndarray(x[None, k:k + 1024], format="flt", layout="mono")
                f.sample_rate, f.pts, f.time_base = sr, k, Fraction(1, sr)
                for p in as_.encode(f):
                    out.mux(p)
            for p in as_.encode():
                out.mux(p)
    return path


# --- files -----------------------------------------------------------------

def test_real_clip_decodes_in_sync() -> None:
    m = load_media(av_clip())
    assert m.frames and m.frames[0].dtype == np.uint8 and m.frames[0].shape == (360, 480, 3)
    assert np.all(np.diff(m.times) > 0)
    assert m.audio.dtype == np.float32 and m.audio.ndim == 1
    # audio and video cover the same span (CREMA-D FLV: MP3 padding adds < 0.1 s)
    assert abs(len(m.audio) / 16000 - (m.times[-1] + 1 / 30)) < 0.1
    assert abs(m.duration - probe(av_clip()).duration) < 0.1
    assert 0.01 < float(np.sqrt(np.mean(m.audio ** 2))) < 0.5   # real speech, scaled to [-1, 1]


def test_flash_and_beep_line_up(tmp_path: Path) -> None:
    m = load_media(make_clip(tmp_path / "sync.mp4", event_s=1.0))
    bright = np.array([f.mean() for f in m.frames])
    t_flash = m.times[np.argmax(bright > 128)]
    env = np.abs(m.audio)
    t_beep = np.argmax(env > 0.1) / 16000
    assert abs(t_flash - 1.0) < 0.045 and abs(t_beep - 1.0) < 0.03
    assert abs(t_flash - t_beep) < 0.05     # within about one frame


def test_iteration_interleaves_and_audio_is_contiguous() -> None:
    items = list(iter_media(av_clip()))
    kinds = [type(i) for i in items]
    assert VideoFrame in kinds and AudioChunk in kinds
    first_audio = kinds.index(AudioChunk)
    assert first_audio < 10          # interleaved in file order, not all video first
    chunks = [i for i in items if isinstance(i, AudioChunk)]
    for a, b in zip(chunks, chunks[1:]):
        assert abs(a.t + a.duration - b.t) < 1e-6
    assert all(c.samples.dtype == np.float32 for c in chunks)


def test_audio_holes_become_silence_and_stay_in_sync(tmp_path: Path) -> None:
    """A clip joined to itself ten times (packets copied: each join leaves a ~30 ms hole
    in the audio track): audio time keeps to the video's instead of falling behind."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "long_recording", Path(__file__).resolve().parents[1] / "benchmarks" / "long_recording.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    looped = tmp_path / "looped.mkv"
    bench.make_long_recording(av_clip(), looped, 120.0)
    last_v = audio_end = 0.0
    gaps = []
    for item in iter_media(looped):
        if isinstance(item, AudioChunk):
            gaps.append(item.t - audio_end)
            audio_end = item.t + item.duration
        else:
            last_v = item.t
    assert max(gaps[1:]) < 1e-6                   # contiguous: holes are filled, not skipped
    # Audio ends within a frame of the last frame; counting samples alone ends 0.27 s early.
    assert -0.034 < audio_end - last_v < 0.05


def test_video_without_audio(tmp_path: Path) -> None:
    p = make_clip(tmp_path / "silent.mp4", audio=False)
    info = probe(p)
    assert info.has_video and not info.has_audio
    m = load_media(p)
    assert len(m.frames) == 50 and len(m.audio) == 0
    with pytest.raises(MediaError, match="has no audio track"):
        list(iter_media(p, video=False, audio=True))


def test_audio_only_files() -> None:
    for p in [*sorted((FIX / "ravdess").glob("*.wav")), *sorted((FIX / "crema_d").glob("*.mp3"))]:
        m = load_media(p)
        assert m.frames == [] and m.audio.dtype == np.float32
        assert 1.9 < len(m.audio) / 16000 < 2.7, p


def test_fps_subsampling_keeps_one_frame_per_slot() -> None:
    m = load_media(av_clip(), fps=4)
    slots = np.floor(m.times * 4 + 1e-6)
    assert len(np.unique(slots)) == len(slots)
    assert abs(len(m.frames) - m.duration * 4) <= 2


@pytest.mark.parametrize("name,why", [
    ("text.mp4", "not a media file"),
    ("empty.wav", "empty"),
    ("truncated.mp4", "truncated"),
])
def test_damaged_files_raise_media_error_naming_the_file(name: str, why: str) -> None:
    p = FIX / "corrupt" / name
    with pytest.raises(MediaError) as e:
        load_media(p)
    assert str(p) in str(e.value) and why in str(e.value)
    assert e.value.path == str(p)


def test_missing_file() -> None:
    with pytest.raises(MediaError, match="does not exist"):
        probe(FIX / "nope.mkv")


def test_truncated_stream_keeps_what_decoded_with_a_warning() -> None:
    p = FIX / "corrupt" / "truncated.flv"
    with pytest.warns(RuntimeWarning, match="truncated"):
        m = load_media(p)
    assert 0.5 < m.duration < 1.5 and len(m.frames) > 10 and len(m.audio) > 8000


def test_a_file_that_grows_while_read_is_not_called_truncated(tmp_path: Path) -> None:
    """OBS still writing the recording: its end is where the writer is, not a cut."""
    p = tmp_path / "recording.flv"
    shutil.copy(FIX / "corrupt" / "truncated.flv", p)
    notes: list[str] = []
    items = iter_media(p, on_warning=notes.append)
    next(items)
    with open(p, "ab") as f:            # the writer adds to the file meanwhile
        f.write(b"\0" * 4096)
    rest = list(items)
    assert rest and len(notes) == 1
    assert "grew while it was read" in notes[0] and "run again when the recording has ended" in notes[0]
    assert "truncated" not in notes[0]


def test_file_source_paced_latest_frame_wins() -> None:
    t0 = time.monotonic()
    src = FileSource(av_clip(), paced=True, speed=4.0, max_width=320)
    try:
        # Wait for 1.2 s of media rather than sleep a fixed time: on a loaded
        # machine the decoder may start late, which is not what this tests.
        time.sleep(0.3)
        deadline = time.monotonic() + 10
        f = src.read_latest()
        while (f is None or f.t < 1.2) and time.monotonic() < deadline:
            time.sleep(0.1)
            f = src.read_latest() or f
        wall = time.monotonic() - t0
        assert f is not None and f.image.shape[1] == 320 and f.t >= 1.2
        assert f.t < 4.0 * wall + 0.5           # paced at 4x the wall clock, not flat out
        assert src.dropped > 10                 # nobody read: frames were replaced, not queued
        assert src.audio.t_end is not None and abs(src.audio.t_end - f.t) < 0.5
        assert len(src.read(1.0)) == 16000
    finally:
        src.close()
    assert not src._thread.is_alive()


def test_file_source_flat_out_ends() -> None:
    src = FileSource(av_clip(), paced=False)
    assert src.done.wait(10)
    assert src.status == "ended" and src.read_latest() is not None
    src.close()


def test_file_source_bad_file_fails_in_caller() -> None:
    with pytest.raises(MediaError):
        FileSource(FIX / "corrupt" / "text.mp4")


# --- rings -----------------------------------------------------------------

def test_audio_ring_wraps_and_pads() -> None:
    r = AudioRing(1.0)
    assert np.all(r.read(0.5) == 0)
    r.write(np.ones(4000, np.float32), t_start=10.0)
    x = r.read(0.5)
    assert x.shape == (8000,) and x[:4000].sum() == 0 and np.all(x[4000:] == 1)
    assert r.t_end == pytest.approx(10.25)
    for k in range(10):                        # 2.5 s through a 1 s ring
        r.write(np.full(4000, k, np.float32))
    assert r.t_end == pytest.approx(12.75)
    y = r.read(1.0)
    assert np.array_equal(y, np.repeat(np.arange(6, 10, dtype=np.float32), 4000))
    r.write(np.arange(20000, dtype=np.float32))  # longer than the ring
    assert r.read(1.0)[-1] == 19999 and r.read(1.0)[0] == 4000
    with pytest.raises(ValueError):
        r.read(2.0)


def test_latest_slot_counts_drops() -> None:
    s = LatestSlot()
    assert s.get() is None
    for i in range(5):
        s.put(VideoFrame(i, np.zeros((2, 2, 3), np.uint8)))
    assert s.get().t == 4 and s.dropped == 4
    s.put(VideoFrame(5, np.zeros((2, 2, 3), np.uint8)))
    assert s.get().t == 5 and s.dropped == 4


# --- camera ----------------------------------------------------------------

def test_camera_missing_device_is_a_clear_error() -> None:
    from obs_merlb.capture.camera import CameraError, CameraSource

    with pytest.raises(CameraError, match="could not be opened"):
        CameraSource(97)


def test_camera_thread_reads_latest_frames_from_a_stream() -> None:
    from obs_merlb.capture.camera import CameraSource

    # No webcam here: OpenCV opens a video file through the same capture API.
    cam = CameraSource(str(av_clip()))
    try:
        deadline = time.monotonic() + 5
        while cam.read_latest() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        f = cam.read_latest()
        assert f is not None and f.image.shape == (360, 480, 3) and f.image.dtype == np.uint8
        assert abs(f.t - time.monotonic()) < 2      # live sources stamp on the monotonic clock
    finally:
        cam.close()


# --- OBS screenshots -------------------------------------------------------

def _jpeg_uri() -> tuple[str, np.ndarray]:
    import cv2

    img = np.zeros((90, 160, 3), np.uint8)
    img[:, :80] = (255, 0, 0)   # left half red (RGB)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    return "data:image/jpg;base64," + base64.b64encode(buf.tobytes()).decode(), img


def test_data_uri_decoding() -> None:
    from obs_merlb.capture.obs_screens import decode_data_uri
    from obs_merlb.obs_client import ObsError

    uri, img = _jpeg_uri()
    out = decode_data_uri(uri)
    assert out.shape == img.shape and out[45, 20, 0] > 200 and out[45, 20, 2] < 60
    assert decode_data_uri(uri.split(",", 1)[1]).shape == img.shape  # bare base64 too
    for bad in ("", "data:image/png;base64,", "data:image/jpg;base64,bm90IGFuIGltYWdl"):
        with pytest.raises(ObsError):
            decode_data_uri(bad)


def test_nothing_listening_maps_to_unreachable_and_retries(caplog) -> None:
    from obs_merlb.capture.obs_screens import OBSScreenshotSource
    from obs_merlb.obs_client import ObsUnreachable, open_client

    from tests.obs_standin import free_port

    port = free_port()
    with pytest.raises(ObsUnreachable, match=f"ws://127.0.0.1:{port}.*is OBS running"):
        open_client("127.0.0.1", port, "s3cret-pass", timeout=1)
    src = OBSScreenshotSource("Camera", port=port, password="s3cret-pass", timeout=1,
                              max_backoff_s=0.2)
    try:
        with pytest.raises(ObsUnreachable):
            src.wait_ready(3)
        assert src.status == "reconnecting" and "is OBS running" in src.last_error
        time.sleep(0.8)                      # it keeps retrying, it does not die
        assert src._thread.is_alive() and src.read_latest() is None
    finally:
        src.close()
    assert "s3cret-pass" not in caplog.text and "s3cret-pass" not in repr(src)


def _fake_obs(password: str, source: str):
    """The obs-websocket stand-in answering GetSourceScreenshot for one source name."""
    from tests.obs_standin import ObsStandIn, Refuse

    uri, _ = _jpeg_uri()

    def shot(data: dict) -> dict:
        if data.get("sourceName") != source:
            raise Refuse(600, "No source was found")
        return {"imageData": uri}

    return ObsStandIn(password, {"GetSourceScreenshot": shot}).start()


def test_password_and_source_errors_against_a_fake_obs(caplog) -> None:
    pytest.importorskip("websockets.sync.server")
    from obs_merlb.capture.obs_screens import OBSScreenshotSource, screenshot
    from obs_merlb.obs_client import ObsAuthError, ObsLink, ObsSourceNotFound, open_client

    obs = _fake_obs("right-pass", "Camera")
    try:
        with pytest.raises(ObsAuthError, match="password"):
            open_client("127.0.0.1", obs.port, "wrong-pass", timeout=2)
        with pytest.raises(ObsAuthError, match="none was given"):
            open_client("127.0.0.1", obs.port, "", timeout=2)
        link = ObsLink("127.0.0.1", obs.port, "right-pass", 2)
        try:
            assert screenshot(link, "Camera").shape == (90, 160, 3)
            with pytest.raises(ObsSourceNotFound, match="'Webcam'"):
                screenshot(link, "Webcam")
            assert link.connected   # OBS refusing one request keeps the connection
        finally:
            link.close()
        src = OBSScreenshotSource("Camera", port=obs.port, password="right-pass", rate_hz=50)
        try:
            src.wait_ready(5)
            assert src.status == "running" and src.rate_hz == 15.0   # capped
            assert src.read_latest().image.shape == (90, 160, 3)
        finally:
            src.close()
    finally:
        obs.stop()
    assert "wrong-pass" not in caplog.text and "right-pass" not in caplog.text


# --- microphone ------------------------------------------------------------

class _FakeStream:
    """Stands in for sounddevice.InputStream: there is no audio device (and no
    PortAudio) on the test machine, so these tests drive the callback by hand."""

    def __init__(self, backend, device, samplerate, channels, dtype, blocksize, callback) -> None:
        if backend.fail_open:
            raise RuntimeError("Error opening InputStream: Device unavailable [PaErrorCode -9985]")
        self.backend, self.samplerate, self.channels = backend, samplerate, channels
        self.callback, self.blocksize = callback, blocksize
        self.active = False
        backend.streams.append(self)

    def start(self) -> None:
        self.active = True

    def stop(self) -> None:
        self.active = False

    def close(self) -> None:
        self.active = False

    def feed(self, x: np.ndarray) -> None:
        for k in range(0, len(x), self.blocksize):
            self.callback(x[k:k + self.blocksize], len(x[k:k + self.blocksize]), None, None)


class _FakeSD:
    def __init__(self, devices: list[dict]) -> None:
        self.devices = devices
        self.streams: list[_FakeStream] = []
        self.fail_open = False

    def query_devices(self, kind=None):
        if kind == "input":
            return next((d for d in self.devices if d["max_input_channels"] > 0), None)
        return list(self.devices)

    def InputStream(self, **kw) -> _FakeStream:  # noqa: N802 (sounddevice's name)
        return _FakeStream(self, **kw)


USB_MIC = {"name": "USB Audio Device: - (hw:1,0)", "max_input_channels": 2,
           "default_samplerate": 48000.0}
SPEAKERS = {"name": "HDA Intel PCH: ALC892 Analog", "max_input_channels": 0,
            "default_samplerate": 48000.0}


def _wait(cond, timeout: float = 3.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return False


def test_mic_resamples_stereo_48k_to_16k_mono() -> None:
    """Mock: no audio device exists here; a fake stream calls the real callback."""
    from obs_merlb.capture.mic import MicSource

    sd = _FakeSD([SPEAKERS, USB_MIC])
    mic = MicSource("usb audio", backend=sd, poll_s=0.05)
    try:
        assert mic.status == "running" and mic.device_name.startswith("USB Audio")
        st = sd.streams[-1]
        assert st.samplerate == 48000 and st.channels == 2
        t = np.arange(48000) / 48000
        tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        st.feed(np.stack([tone, tone], axis=1))
        x = mic.read(0.5)
        assert x.dtype == np.float32 and x.shape == (8000,)
        spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
        assert abs(np.argmax(spec) * 16000 / len(x) - 440) < 4       # still 440 Hz
        assert 0.18 < np.sqrt(np.mean(x ** 2)) < 0.24                 # level kept (0.3/sqrt 2)
        assert abs(mic.t_end - time.monotonic()) < 1
    finally:
        mic.close()
    assert mic.status == "closed" and not st.active


def test_mic_missing_then_plugged_in() -> None:
    """Mock: no audio device exists here; the fake backend's device list changes."""
    from obs_merlb.capture.mic import MicSource

    sd = _FakeSD([SPEAKERS])
    mic = MicSource("Yeti", backend=sd, max_backoff_s=0.1)
    try:
        assert mic.status == "missing" and "Yeti" in mic.last_error
        assert np.all(mic.read(0.25) == 0)          # silence, not an exception
        sd.devices.append({"name": "Yeti Stereo Microphone", "max_input_channels": 2,
                           "default_samplerate": 44100.0})
        assert _wait(lambda: mic.status == "running")
        sd.streams[-1].feed(np.full((4410, 2), 0.5, np.float32))
        assert abs(mic.read(0.1)[-100:].mean() - 0.5) < 0.05
    finally:
        mic.close()


def test_mic_unplugged_mid_run_is_retried() -> None:
    """Mock: no audio device exists here; the fake stream goes silent and the
    device vanishes, as PortAudio does when a USB mic is pulled."""
    from obs_merlb.capture.mic import MicSource

    sd = _FakeSD([USB_MIC])
    mic = MicSource("USB", backend=sd, stall_s=0.2, poll_s=0.05, max_backoff_s=0.1)
    try:
        sd.streams[-1].feed(np.full((4800, 2), 0.2, np.float32))
        assert mic.status == "running"
        sd.devices.clear()                      # pulled: no callbacks, no device
        sd.streams[-1].active = False
        assert _wait(lambda: mic.status in ("reconnecting", "missing"))
        assert "USB" in mic.last_error and np.all(mic.read(0.1) == 0)   # stale audio dropped
        assert _wait(lambda: mic.status == "missing")
        sd.fail_open = True                     # back, but busy at first
        sd.devices.append(USB_MIC)
        assert _wait(lambda: mic.last_error and "Device unavailable" in mic.last_error)
        sd.fail_open = False
        assert _wait(lambda: mic.status == "running")
        assert mic.reconnects == 1
    finally:
        mic.close()


def test_mic_without_portaudio_is_a_clear_error(monkeypatch) -> None:
    import builtins

    from obs_merlb.capture.mic import MicError, load_sounddevice

    real_import = builtins.__import__

    def no_portaudio(name, *a, **kw):
        if name == "sounddevice":
            raise OSError("PortAudio library not found")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_portaudio)
    with pytest.raises(MicError, match="libportaudio2"):
        load_sounddevice()


@pytest.mark.parametrize("devices, name, says", [
    ([], None, "no default input device, and no input devices at all: plug a microphone in"),
    ([SPEAKERS], "Yeti", "no input device matching 'Yeti', and no input devices at all"),
    ([USB_MIC], "Yeti", "no input device matching 'Yeti' (inputs found: 'USB Audio Device: - (hw:1,0)'); "
                        "choose one with --mic NAME"),
])
def test_mic_missing_says_what_to_do(devices: list[dict], name: str | None, says: str) -> None:
    from obs_merlb.capture.mic import MicSource

    mic = MicSource(name, backend=_FakeSD(devices), max_backoff_s=0.1)
    try:
        assert mic.status == "missing" and says in mic.last_error
        assert "None" not in mic.last_error and "--mic none to run without voice" in mic.last_error
    finally:
        mic.close()


def test_segment_cut_by_start_and_end() -> None:
    m = load_media(av_clip(), start=0.8, end=1.8)
    assert m.start == 0.8 and 0.8 <= m.times[0] < 0.85 and m.times[-1] < 1.8
    assert abs(len(m.audio) / 16000 - 1.0) < 0.01 and abs(m.duration - 1.0) < 0.05
    full = load_media(av_clip())
    k = int(0.8 * 16000)
    # the same samples as in the whole decode, to within resampler rounding
    assert np.corrcoef(full.audio[k:k + 8000], m.audio[:8000])[0, 1] > 0.99
