"""Training: a tiny real run, checkpoints without pickles, resume, pairing."""
from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch

from obs_merlb.labels import MODALITIES
from obs_merlb.train import loop, start
from obs_merlb.train.data import PairedDataset, StepDataset, collate
from obs_merlb.train.loop import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "train" / "recipes" / "tiny.toml"


def _cfg(tmp_path: Path, **kw) -> TrainConfig:
    cfg = TrainConfig.from_toml(RECIPE)
    cfg.out = str(tmp_path / "run")
    cfg.cache = str(tmp_path / "cache")
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def test_tiny_run_writes_model_checkpoint_and_curve(tmp_path: Path) -> None:
    summary = train(_cfg(tmp_path), quiet=True)
    run = Path(summary["out"])
    for f in ["model/model.safetensors", "model/config.json", "checkpoint/model.safetensors",
              "checkpoint/optimizer.safetensors", "checkpoint/state.json", "training_curve.png", "summary.json"]:
        assert (run / f).exists(), f
    assert len(summary["history"]) == 2
    meta = json.loads((run / "model" / "config.json").read_text())
    assert meta["config"]["fusion"] == "tt" and meta["meta"]["train"]["pairing"] is True
    # No pickles anywhere in the run folder.
    assert not [p for p in run.rglob("*") if p.suffix in (".pt", ".pth", ".pkl", ".bin")]

    # Resume: continuing to 3 epochs runs only the third.
    resumed = train(_cfg(tmp_path, epochs=3, resume=True), quiet=True)
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3]


def test_checkpoint_round_trip_restores_optimizer(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    loop.save_checkpoint(tmp_path, model, opt, {"epoch": 4})
    model2 = torch.nn.Linear(3, 2)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=0.5)
    doc = loop.load_checkpoint(tmp_path, model2, opt2)
    assert doc["epoch"] == 4 and opt2.param_groups[0]["lr"] == 0.1
    assert torch.equal(model2.weight, model.weight)
    s1, s2 = opt.state_dict()["state"][0], opt2.state_dict()["state"][0]
    assert torch.equal(s1["exp_avg_sq"], s2["exp_avg_sq"]) and float(s1["step"]) == float(s2["step"])


def test_pairs_match_labels_across_people(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, val_fraction=0.0)
    train_rec, _ = loop.load_data(cfg, quiet=True)
    ds = PairedDataset(train_rec, ["face", "voice"], 8, train=True, n_pairs=12)
    assert len(ds) == 12
    for i in range(len(ds)):
        f, v = ds.pair(i)
        assert train_rec.targets[f, 0] == train_rec.targets[v, 0] >= 0       # same emotion
        assert train_rec.items[f].group != train_rec.items[v].group
        s = ds[i]
        assert s["mask"][:, 0].all() and s["face"].shape[0] == s["voice"].shape[0]
    batch = collate([ds[0], StepDataset(train_rec, ["face", "voice"], 8, False)[0]], ["face", "voice"])
    assert batch["face"].shape[:2] == batch["mask"].shape[:2] and batch["y"].shape == (2, 4)


def test_mismatched_pairs_disagree_and_take_the_faces_label(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, val_fraction=0.0)
    train_rec, _ = loop.load_data(cfg, quiet=True)
    emo = train_rec.targets[:, 0]
    always = PairedDataset(train_rec, ["face", "voice"], 8, train=True, n_pairs=12, mismatch=1.0)
    assert len(always.voices) >= 2                      # fixtures hold voices of several emotions
    for i in range(len(always)):
        f, v = always.pair(i)
        assert emo[f] != emo[v]
        assert np.array_equal(always[i]["y"], train_rec.targets[f])     # the face's label, every head
    # ... and modality dropout never takes their face away (it would leave a voice
    # under another emotion's label); agreeing pairs may lose either side.
    from obs_merlb.model.config import MERLBConfig
    from obs_merlb.model.merlb import MERLB

    model = MERLB(MERLBConfig(modalities=["face", "voice"], modality_dropout=0.9)).train()
    never = PairedDataset(train_rec, ["face", "voice"], 8, train=True, n_pairs=64, mismatch=0.0)
    for ds, face_always_kept in ((always, True), (never, False)):
        batch = collate([ds[i] for i in range(len(ds))], ["face", "voice"])
        m = model.modality_dropout(model._select(batch["mask"], batch), batch["keep"])
        kept = m[..., 0].amax(1) > 0
        assert bool(kept.all()) is face_always_kept
        assert (m[..., 1].amax(1) == 0).any()             # voices are still dropped
    some = PairedDataset(train_rec, ["face", "voice"], 8, train=True, n_pairs=400, mismatch=0.25)
    share = np.mean([emo[f] != emo[v] for f, v in map(some.pair, range(len(some)))])
    assert 0.15 < share < 0.35
    with pytest.raises(SystemExit, match="pair_mismatch"):
        train(_cfg(tmp_path, pair_mismatch=1.5), quiet=True)


def test_cli_flags_override_the_recipe(tmp_path: Path) -> None:
    from obs_merlb.cli import main

    out = tmp_path / "cli"
    rc = main(["train", "--config", str(RECIPE), "--data", str(ROOT / "tests/fixtures/fer2013"),
               "--fusion", "late", "--task", "emotion", "--modalities", "face", "--epochs", "1",
               "--out", str(out), "--cache", str(tmp_path / "cache"), "--set", "pairing=false"])
    assert rc == 0
    cfg = json.loads((out / "model" / "config.json").read_text())["config"]
    assert (cfg["fusion"], cfg["task"], cfg["modalities"]) == ("late", "emotion", ["face"])


def test_schedule_warms_up_then_decays() -> None:
    lrs = [loop.lr_at(s, 100, 10, 1.0, "cosine") for s in range(100)]
    assert lrs[0] < lrs[9] == pytest.approx(1.0) and lrs[-1] < 0.05
    one = [loop.lr_at(s, 100, 0, 1.0, "onecycle") for s in range(100)]
    assert int(np.argmax(one)) == 30


def test_init_part_takes_one_encoder_from_another_model(tmp_path: Path) -> None:
    from obs_merlb.model.config import MERLBConfig
    from obs_merlb.model.io import save_model
    from obs_merlb.model.merlb import MERLB

    torch.manual_seed(0)
    base, donor = MERLB(MERLBConfig(modalities=["face", "voice"])), MERLB(MERLBConfig(modalities=["face", "voice"]))
    save_model(base, tmp_path / "base")
    save_model(donor, tmp_path / "donor")
    cfg = TrainConfig(init=str(tmp_path / "base"), init_parts=[f"encoders.voice.={tmp_path / 'donor'}"])
    model = start.build_model(cfg, None)
    got, want_voice, want_rest = model.state_dict(), donor.state_dict(), base.state_dict()
    for k, v in got.items():
        assert torch.equal(v, want_voice[k] if k.startswith("encoders.voice.") else want_rest[k]), k
    assert not torch.equal(got["encoders.voice.body.0.0.weight"], want_rest["encoders.voice.body.0.0.weight"])

    # A prefix the donor lacks, or a malformed spec, stops with a message instead of a silent no-op.
    for spec in (f"encoders.body.={tmp_path / 'donor'}", "encoders.voice."):
        with pytest.raises(SystemExit, match="init part"):
            start.build_model(TrainConfig(init=str(tmp_path / "base"), init_parts=[spec]), None)


def test_augmentations_keep_shape_range_and_vary() -> None:
    from obs_merlb.train.data import augment_face, augment_voice

    rng = np.random.default_rng(0)
    face = np.random.default_rng(1).random((3, 1, 64, 64)).astype(np.float32)
    outs = [augment_face(face, rng) for _ in range(4)]
    assert all(o.shape == face.shape and o.dtype == np.float32 and 0 <= o.min() and o.max() <= 1 for o in outs)
    assert not np.allclose(outs[0], outs[1])
    # One transform per window: the steps of an identical-step window stay identical.
    same = augment_face(np.repeat(face[:1], 3, axis=0), rng)
    assert np.allclose(same[0], same[2])

    voice = np.random.default_rng(2).normal(size=(4, 1, 64, 100)).astype(np.float32)
    v1, v2 = augment_voice(voice, rng), augment_voice(voice, rng)
    assert v1.shape == voice.shape and v1.dtype == voice.dtype and not np.allclose(v1, v2)
    assert np.array_equal(voice, np.random.default_rng(2).normal(size=(4, 1, 64, 100)).astype(np.float32))


def _reaches_training_windows_only(tmp_path: Path, modality: str, **setting: float) -> None:
    """An augmentation setting changes some training windows of `modality` and no validation window."""
    train_rec, _ = loop.load_data(_cfg(tmp_path, val_fraction=0.0), quiet=True)
    col = MODALITIES.index(modality)
    items = [i for i in range(len(train_rec)) if train_rec.arrays[i]["mask"][:, col].any()]
    on, off = (StepDataset(train_rec, [modality], 8, True, **kw) for kw in (setting, {}))
    assert any(not np.array_equal(on[i][modality], off[i][modality]) for i in items)
    val, plain = (StepDataset(train_rec, [modality], 8, False, **kw) for kw in (setting, {}))
    assert np.array_equal(val[items[0]][modality], plain[items[0]][modality])


def test_face_erasing_covers_one_rectangle_per_window_and_is_off_by_default(tmp_path: Path) -> None:
    from obs_merlb.train.data import augment_face

    face = np.full((3, 1, 64, 64), 0.5, np.float32)
    for seed in range(40):
        plain = augment_face(face, np.random.default_rng(seed))
        # erase=0 draws nothing extra: recipes without it keep their augmentation stream.
        assert np.array_equal(plain, augment_face(face, np.random.default_rng(seed), erase=0.0))
        erased = augment_face(face, np.random.default_rng(seed), erase=1.0)
        changed = np.abs(erased - plain)[0, 0] > 0
        rows, cols = np.flatnonzero(changed.any(axis=1)), np.flatnonzero(changed.any(axis=0))
        box = (rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1)
        assert 0.005 * 64 * 64 < changed.sum() <= box <= 0.25 * 64 * 64
        assert np.array_equal(erased[0], erased[2])           # the same occluder at every step

    # The recipe setting reaches the training windows; validation windows are never erased.
    _reaches_training_windows_only(tmp_path, "face", face_erase=1.0)
    assert TrainConfig().face_erase == 0.0 and TrainConfig.from_dict({"face_erase": 0.5}).face_erase == 0.5
    with pytest.raises(SystemExit, match="face_erase"):
        train(_cfg(tmp_path, face_erase=1.5), quiet=True)


def test_voice_equaliser_colours_each_window_with_one_smooth_curve(tmp_path: Path) -> None:
    from obs_merlb.train.data import augment_voice

    flat = np.zeros((20, 1, 64, 100), np.float32)
    assert not augment_voice(flat, np.random.default_rng(0), warp=False).any()   # off: nothing added
    curves = []
    for seed in range(20):
        out = augment_voice(flat, np.random.default_rng(seed), warp=False, eq=1.0)[:, 0]
        # The masks fill a few bands and frames of each step with its mean;
        # everything else is one curve over the bands, the same at every step and frame.
        col = np.median(out.transpose(1, 0, 2).reshape(64, -1), axis=1)
        assert np.isclose(out, col[None, :, None]).mean() > 0.7
        assert np.ptp(col) <= 1.5 + 1e-5                         # a tilt of at most eq, a bump of at most eq/2
        assert np.abs(np.diff(col)).max() < 0.1                  # smooth across neighbouring bands
        curves.append(col)
    assert np.std(np.array(curves), axis=0).mean() > 0.05      # a new colour per window

    _reaches_training_windows_only(tmp_path, "voice", voice_eq=1.0)
    assert TrainConfig().voice_eq == 0.0
    with pytest.raises(SystemExit, match="voice_eq"):
        train(_cfg(tmp_path, voice_eq=5.0), quiet=True)


def test_room_reverb_is_a_causal_decaying_tail_and_noise_fills_the_quiet_bins(tmp_path: Path) -> None:
    from obs_merlb.train.data import augment_voice, background_noise, reverb_and_noise, room_reverb

    # Reverb: one loud frame in every band spreads only forward, decaying, and
    # the tail carries 0-12 dB less energy than the direct sound.
    for seed in range(10):
        impulse = np.zeros((1, 1, 64, 100))
        impulse[..., 10] = 1.0
        out = room_reverb(impulse, np.random.default_rng(seed))[0, 0]
        assert np.array_equal(out[:, :11], impulse[0, 0, :, :11])          # nothing before it changes
        tail = out[:, 11:]
        assert (np.diff(tail, axis=1) <= 1e-12).all() and tail[:, 0].min() > 0
        assert np.all((tail.sum(axis=1) <= 1.0 + 1e-9) & (tail.sum(axis=1) >= 10 ** -1.2 - 1e-9))
        assert tail[-1, 5:].sum() < tail[0, 5:].sum()                       # highs die first

    # Noise: the quiet parts of a window rise, the loud ones barely move, at 5-30 dB SNR.
    speech = np.full((2, 1, 64, 100), 1e-6)
    speech[..., 40:60] = 1.0
    for seed in range(10):
        noisy = background_noise(speech, speech, np.random.default_rng(seed))
        added = noisy - speech
        assert (added > 0).all()
        assert 10 ** -3.0 <= added.mean() / speech.mean() <= 10 ** -0.5 + 1e-9
        assert np.log(noisy[..., :40]).mean() - np.log(speech[..., :40]).mean() > 3.0
        assert np.log(noisy[..., 40:60]).mean() - np.log(speech[..., 40:60]).mean() < 0.5

    # On log-mel windows: masked (all-zero) steps stay masked; power never falls;
    # off (room 0) draws nothing, so recipes without it repeat exactly.
    x = np.random.default_rng(0).normal(-8.0, 2.0, (8, 1, 64, 100)).astype(np.float32)
    x[3] = 0
    y = reverb_and_noise(x, np.random.default_rng(1), 1.0)
    assert y.dtype == x.dtype and not y[3].any() and (y - x)[[0, 1, 2, 4, 5, 6, 7]].min() >= 0
    assert np.array_equal(augment_voice(x, np.random.default_rng(2)), augment_voice(x, np.random.default_rng(2), room=0.0))
    assert not np.array_equal(augment_voice(x, np.random.default_rng(2)), augment_voice(x, np.random.default_rng(2), room=1.0))

    _reaches_training_windows_only(tmp_path, "voice", voice_room=1.0)
    assert TrainConfig().voice_room == 0.0
    with pytest.raises(SystemExit, match="voice_room"):
        train(_cfg(tmp_path, voice_room=1.5), quiet=True)


def test_loader_workers_see_each_new_epoch_of_augmentations_and_pairs(tmp_path: Path) -> None:
    """Persistent DataLoader workers hold their own dataset copies: set_epoch
    in the main process must still reach them (else every epoch replays
    epoch 0's augmentations, and a GPU run with workers memorises them)."""
    from torch.utils.data import DataLoader

    from obs_merlb.train.data import Collate, PairedDataset

    train_rec, _ = loop.load_data(_cfg(tmp_path, val_fraction=0.0), quiet=True)
    faces = [i for i in range(len(train_rec)) if train_rec.arrays[i]["mask"][:, 0].any()][:4]
    ds = StepDataset(train_rec, ["face", "voice"], 8, True, face_erase=0.5)
    loader = DataLoader(torch.utils.data.Subset(ds, faces), batch_size=len(faces), num_workers=2,
                        persistent_workers=True, collate_fn=Collate(["face", "voice"]))
    seen = []
    for epoch in range(2):
        ds.set_epoch(epoch)
        (batch,) = list(loader)
        # What a worker drew is what the main process draws for that epoch.
        assert torch.equal(batch["face"], Collate(["face", "voice"])([ds[i] for i in faces])["face"])
        seen.append(batch["face"])
    assert not torch.equal(seen[0], seen[1])

    pairs = PairedDataset(train_rec, ["face", "voice"], 8, True, face_erase=0.5)
    assert pairs.face_erase == 0.5
    if len(pairs):
        pairs.set_epoch(3)
        assert pairs.epoch == 3 and pairs.pair(0) == pairs.pair(0)


def test_weight_average_is_what_gets_validated_saved_and_resumed(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    summary = train(_cfg(tmp_path, ema_epochs=1.0, epochs=2), quiet=True)
    run = Path(summary["out"])
    raw = load_file(str(run / "checkpoint" / "model.safetensors"))
    avg = load_file(str(run / "checkpoint" / "ema.safetensors"))
    best = load_file(str(run / "best" / "model.safetensors"))
    key = "fusion.heads.heads.emotion.weight"
    # The shipped best model is the average (taken at the best epoch), not the raw weights.
    assert not torch.equal(raw[key], avg["module." + key])
    if summary["best_epoch"] == 2:
        assert torch.equal(best[key], avg["module." + key])
    resumed = train(_cfg(tmp_path, ema_epochs=1.0, epochs=3, resume=True), quiet=True)
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3]
    with pytest.raises(SystemExit, match="weight average"):
        (run / "checkpoint" / "ema.safetensors").unlink()
        train(_cfg(tmp_path, ema_epochs=1.0, epochs=4, resume=True), quiet=True)


def test_training_windows_hold_something() -> None:
    from obs_merlb.train.data import window

    mask = np.zeros((12, 4), np.float32)
    mask[9:, 1] = 1                                         # speech only in the last 3 steps
    rec = {"mask": mask, "voice": np.arange(12, dtype=np.float32)[:, None]}
    rng = np.random.default_rng(0)
    for _ in range(50):
        assert window(rec, 4, rng)["mask"].any()
    assert window(rec, 4, None)["voice"][0, 0] == 4          # validation: the centred window


def test_every_shipped_recipe_loads_and_build_default_runs_each_one() -> None:
    """A typo in a recipe (an unknown setting) fails here, not hours into a rebuild."""
    import re

    recipes = ROOT / "train" / "recipes"
    for toml in sorted(recipes.glob("*.toml")):
        cfg = TrainConfig.from_toml(toml)
        assert cfg.epochs >= 1 and cfg.lr > 0, toml.name
    script = (recipes / "build_default.sh").read_text()
    # `RECIPE=voice stage voice_room ...` runs default_voice.toml into RUNS/voice_room.
    stages = {name: recipe or name for recipe, name in re.findall(r"(?:RECIPE=(\w+) )?\bstage (\w+) --", script)}
    assert {"face", "face_wide", "face_wide2", "voice", "fusion", "voice_room", "fusion_room"} <= set(stages)
    assert stages["voice_room"] == "voice" and stages["fusion_room"] == "fusion"
    train_all = re.search(r"^train_all\(\) \{(.*)\}$", script, flags=re.M).group(1)
    for name, recipe in stages.items():
        assert (recipes / f"default_{recipe}.toml").exists(), name
        assert f" {name};" in train_all, f"train_all skips stage {name}"
    # Settings the script adds with --set must be real ones too.
    known = {f.name for f in fields(TrainConfig)}
    keys = re.findall(r"--set \"?(\w+)=", script)
    assert {"voice_teacher", "voice_room"} <= set(keys)
    for key in keys:
        assert key in known, f"build_default.sh sets unknown setting {key}"


def test_grow_face_stage_starts_from_the_init_and_needs_one(tmp_path: Path) -> None:
    from obs_merlb.model.config import MERLBConfig
    from obs_merlb.model.io import save_model
    from obs_merlb.model.merlb import MERLB

    torch.manual_seed(0)
    base = MERLB(MERLBConfig(modalities=["face", "voice"]))
    save_model(base, tmp_path / "base")
    model = start.build_model(TrainConfig(init=str(tmp_path / "base"), grow_face=3), None)
    assert model.cfg.face_top_layers == 7
    old = base.state_dict()
    same = [k for k, v in model.state_dict().items() if k in old and old[k].shape == v.shape]
    assert len(same) > 0.9 * len(old) and all(torch.equal(model.state_dict()[k], old[k]) for k in same)
    both = start.build_model(TrainConfig(init=str(tmp_path / "base"), grow_face=1, grow_face_mid=2), None)
    assert (both.cfg.face_top_layers, both.cfg.face_mid_layers) == (5, 6)
    with pytest.raises(SystemExit, match="grow_face needs init"):
        start.build_model(TrainConfig(grow_face=3), None)
    with pytest.raises(SystemExit, match="grow_face_mid needs init.*model.face_mid_layers"):
        start.build_model(TrainConfig(grow_face_mid=3), None)
    with pytest.raises(SystemExit, match="grow_face_mid=-2"):
        start.build_model(TrainConfig(init=str(tmp_path / "base"), grow_face_mid=-2), None)
    with pytest.raises(SystemExit, match="at least one layer"):
        start.build_model(TrainConfig(init=str(tmp_path / "base"), grow_face=-1), None)
    save_model(MERLB(MERLBConfig(modalities=["voice"])), tmp_path / "voice_only")
    with pytest.raises(SystemExit, match="needs a model with a face encoder"):
        start.build_model(TrainConfig(init=str(tmp_path / "voice_only"), grow_face=2), None)
    # A run folder instead of its model/ folder: a message, not a traceback.
    with pytest.raises(SystemExit, match="not a saved model folder"):
        start.build_model(TrainConfig(init=str(tmp_path)), None)


def test_bad_model_settings_stop_with_a_message_naming_them(tmp_path: Path) -> None:
    import argparse

    with pytest.raises(SystemExit, match="face_width must be between"):
        train(_cfg(tmp_path, model={"face_width": 9}), quiet=True)
    with pytest.raises(SystemExit, match="face_width must be between"):
        train(_cfg(tmp_path, model={"face_width": "wide"}), quiet=True)
    with pytest.raises(SystemExit, match="unknown model settings: no_such"):
        train(_cfg(tmp_path, model={"no_such": 1}), quiet=True)
    parser = argparse.ArgumentParser()
    loop.add_arguments(parser)
    args = parser.parse_args(["--data", str(tmp_path), "--set", "model.face_width=abc"])
    with pytest.raises(SystemExit, match="not a TOML value"):
        loop.config_from_args(args)


def test_voice_teacher_pulls_only_voice_only_windows(tmp_path: Path) -> None:
    from obs_merlb.model.config import MERLBConfig
    from obs_merlb.model.io import save_model
    from obs_merlb.model.merlb import MERLB

    torch.manual_seed(0)
    teacher, other = (MERLB(MERLBConfig(modalities=["face", "voice"])).eval() for _ in range(2))
    b, t = 4, 3
    face, voice = torch.rand(b, t, 1, 64, 64), torch.randn(b, t, 1, 64, 100)
    mask = torch.zeros(b, t, 4)
    mask[:, :, MODALITIES.index("voice")] = 1
    mask[:2, :, MODALITIES.index("face")] = 1          # rows 0-1: face+voice, rows 2-3: voice only
    with torch.no_grad():
        same = start.voice_distill_loss(teacher, teacher(None, voice, None, None, mask), voice, mask)
        full = start.voice_distill_loss(teacher, other(face, voice, None, None, mask), voice, mask)
        only = start.voice_distill_loss(teacher, other(None, voice[2:], None, None, mask[2:]), voice[2:], mask[2:])
        none = start.voice_distill_loss(teacher, other(face[:2], voice[:2], None, None, mask[:2]),
                                       voice[:2], mask[:2])
    assert float(same) == pytest.approx(0.0, abs=1e-6)
    assert float(full) > 0.01
    assert float(full) == pytest.approx(float(only), rel=1e-5)   # the face+voice rows add nothing
    assert float(none) == 0.0

    # A run with a teacher trains end to end; a folder that is no model stops with a message.
    save_model(teacher, tmp_path / "teacher")
    summary = train(_cfg(tmp_path, epochs=1, voice_teacher=str(tmp_path / "teacher"), voice_teacher_weight=2.0),
                    quiet=True)
    assert summary["history"][0]["train_loss"] > 0
    with pytest.raises(SystemExit, match="voice_teacher"):
        train(_cfg(tmp_path, voice_teacher=str(tmp_path)), quiet=True)
