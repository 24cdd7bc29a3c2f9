"""MERLB model: shapes, masks, gradients, every fusion type learning on real faces."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from obs_merlb.labels import EMOTIONS, MODALITIES, emotion_targets
from obs_merlb.model import FUSIONS, IGNORE, MERLB, MERLBConfig, multitask_loss
from obs_merlb.model.export import example_inputs

ROOT = Path(__file__).resolve().parents[1]


def _fer_dir() -> Path | None:
    candidates = [ROOT / "tests" / "fixtures" / "fer2013"]
    if os.environ.get("MERLB_DATA"):
        candidates.append(Path(os.environ["MERLB_DATA"]) / "fer2013" / "train")
    candidates.append(ROOT.parent / "shared" / "data" / "fer2013" / "train")
    for c in candidates:
        if c.is_dir() and any((c / e).is_dir() for e in EMOTIONS):
            return c
    return None


def fer_batch(per_class: int = 2, classes: tuple[str, ...] = ("angry", "happy", "sad", "surprise")) -> tuple[torch.Tensor, list[str]]:
    """A few real FER2013 faces as (N, 1, 64, 64) in [0, 1], with their emotion names."""
    import cv2
    root = _fer_dir()
    if root is None:
        pytest.skip("no FER2013 images: neither tests/fixtures/fer2013 nor ../shared/data/fer2013 (or $MERLB_DATA)")
    faces, names = [], []
    for emotion in classes:
        if not (root / emotion).is_dir():
            continue
        files = sorted(p for p in (root / emotion).iterdir() if p.suffix.lower() in (".jpg", ".png"))[:per_class]
        for f in files:
            img = cv2.imread(str(f), cv2.IMREAD_GRAYSCALE)
            faces.append(cv2.resize(img, (64, 64), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255.0)
            names.append(emotion)
    if len(set(names)) < 2:
        pytest.skip(f"too few FER2013 classes found under {root}")
    return torch.from_numpy(np.stack(faces))[:, None], names


def random_inputs(model: MERLB, batch: int = 2, steps: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return example_inputs(model, batch=batch, steps=steps)


def run(model: MERLB, x: dict[str, torch.Tensor], mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    return model(x.get("face"), x.get("voice"), x.get("body"), x.get("scene"), x["mask"] if mask is None else mask)


@pytest.fixture(scope="module")
def models() -> dict[str, MERLB]:
    torch.manual_seed(0)
    return {f: MERLB(MERLBConfig(fusion=f)).eval() for f in FUSIONS}


@pytest.mark.parametrize("fusion", FUSIONS)
def test_shapes_any_steps(models: dict[str, MERLB], fusion: str) -> None:
    model = models[fusion]
    for steps in (1, 3, 8):
        x = random_inputs(model, batch=2, steps=steps)
        with torch.no_grad():
            out = run(model, x)
        assert list(out) == ["emotion", "valence", "arousal", "behaviour"]
        assert {k: tuple(v.shape) for k, v in out.items()} == {
            "emotion": (2, 7), "valence": (2, 3), "arousal": (2, 3), "behaviour": (2, 8)}
        assert all(torch.isfinite(v).all() for v in out.values())


@pytest.mark.parametrize("fusion", FUSIONS)
def test_masked_modality_makes_its_input_irrelevant(models: dict[str, MERLB], fusion: str) -> None:
    model = models[fusion]
    x = random_inputs(model, batch=2, steps=4)
    garbage = {k: torch.randn_like(v) * 10 for k, v in x.items() if k != "mask"}
    with torch.no_grad():
        full = run(model, x)
        for i, m in enumerate(MODALITIES):
            mask = x["mask"].clone()
            mask[..., i] = 0
            masked = run(model, x, mask)
            swapped = run(model, {**x, m: garbage[m]}, mask)
            as_none = run(model, {**x, m: None}, mask)
            for head in full:
                assert torch.isfinite(masked[head]).all()
                torch.testing.assert_close(masked[head], swapped[head], atol=1e-6, rtol=0)
                torch.testing.assert_close(masked[head], as_none[head], atol=1e-6, rtol=0)
            # Masking must matter: the modality was contributing before.
            assert any((masked[h] - full[h]).abs().max() > 1e-6 for h in full), m


@pytest.mark.parametrize("fusion", FUSIONS)
def test_masked_steps_make_their_inputs_irrelevant(models: dict[str, MERLB], fusion: str) -> None:
    model = models[fusion]
    x = random_inputs(model, batch=2, steps=5)
    mask = x["mask"].clone()
    mask[0, 1:3, 0] = 0  # face lost for two steps of sample 0
    mask[1, 4, 1] = 0    # silence at the last step of sample 1
    noisy = {k: v.clone() for k, v in x.items()}
    noisy["face"][0, 1:3] = torch.rand_like(noisy["face"][0, 1:3])
    noisy["voice"][1, 4] = torch.randn_like(noisy["voice"][1, 4]) * 5
    with torch.no_grad():
        a, b = run(model, x, mask), run(model, noisy, mask)
    for head in a:
        torch.testing.assert_close(a[head], b[head], atol=1e-6, rtol=0)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_all_missing_is_finite_and_input_free(models: dict[str, MERLB], fusion: str) -> None:
    model = models[fusion]
    x = random_inputs(model, batch=2, steps=3)
    zero = torch.zeros_like(x["mask"])
    with torch.no_grad():
        a = run(model, x, zero)
        b = run(model, {"mask": zero})
        c = model.sequence(None, None, None, None, zero)
    for head in a:
        assert torch.isfinite(a[head]).all()
        torch.testing.assert_close(a[head], b[head], atol=1e-6, rtol=0)
        torch.testing.assert_close(a[head], c[head], atol=1e-6, rtol=0)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_sequence_on_encoded_steps_equals_forward(models: dict[str, MERLB], fusion: str) -> None:
    model = models[fusion]
    x = random_inputs(model, batch=2, steps=4)
    x["mask"][1, 2, 0] = 0
    with torch.no_grad():
        embs = {m: model.encode(m, x[m].flatten(0, 1)).reshape(2, 4, -1) for m in model.modalities}
        a = run(model, x)
        b = model.sequence(embs["face"], embs["voice"], embs["body"], embs["scene"], x["mask"])
    for head in a:
        torch.testing.assert_close(a[head], b[head], atol=1e-5, rtol=0)


def test_gradients_reach_every_encoder() -> None:
    torch.manual_seed(0)
    model = MERLB(MERLBConfig(fusion="tt", modality_dropout=0.0)).train()
    x = random_inputs(model, batch=2, steps=2)
    out = run(model, x)
    loss, _ = multitask_loss(out, {"emotion": torch.tensor([1, 3]), "valence": torch.tensor([0, 2])})
    loss.backward()
    for m, enc in model.encoders.items():
        grads = [p.grad for p in enc.parameters() if p.requires_grad]
        assert all(g is not None for g in grads), m
        assert sum(float(g.abs().sum()) for g in grads) > 0, m
        # The first layer too: the signal crosses the whole encoder.
        first = next(p for p in enc.parameters() if p.dim() > 1)
        assert first.grad.abs().sum() > 0, m


@pytest.mark.parametrize("fusion", FUSIONS)
def test_loss_falls_on_tiny_real_batch(fusion: str) -> None:
    faces, names = fer_batch()
    n = faces.shape[0]
    torch.manual_seed(0)
    cfg = MERLBConfig(fusion=fusion, dropout=0.0, modality_dropout=0.0, steps=1)
    model = MERLB(cfg).train()
    # FER images are one-step sequences with only the face present.
    mask = torch.zeros(n, 1, 4)
    mask[..., 0] = 1
    face = faces[:, None]
    targets = {h: torch.tensor([cfg.heads[h].index(emotion_targets(e)[i]) for e in names])
               for i, h in enumerate(("emotion", "valence", "arousal"))}
    targets["behaviour"] = torch.full((n,), IGNORE)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(12):
        out = model(face, None, None, None, mask)
        loss, parts = multitask_loss(out, targets)
        assert "behaviour" not in parts
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.7 * losses[0], (fusion, losses)


def test_modality_dropout_never_empties_a_sample() -> None:
    torch.manual_seed(0)
    model = MERLB(MERLBConfig(modality_dropout=0.9)).train()
    mask = torch.zeros(64, 3, 4)
    mask[:, :, 1] = 1            # voice only: dropping it would leave nothing
    mask[:32, :, 0] = 1
    dropped = model.modality_dropout(mask)
    assert (dropped.amax(dim=(1, 2)) > 0).all()
    assert (dropped <= mask).all()
    assert (dropped[:32].sum() < mask[:32].sum())
    model.eval()
    assert torch.equal(model.modality_dropout(mask), mask)


def test_multitask_loss_ignores_missing_labels() -> None:
    logits = {"emotion": torch.randn(3, 7, requires_grad=True), "valence": torch.randn(3, 3, requires_grad=True)}
    total, parts = multitask_loss(logits, {"emotion": torch.tensor([IGNORE, 2, IGNORE]),
                                           "valence": torch.full((3,), IGNORE)})
    assert set(parts) == {"emotion"} and torch.isfinite(total)
    expected = torch.nn.functional.cross_entropy(logits["emotion"][1:2], torch.tensor([2]))
    torch.testing.assert_close(total, expected)
    total.backward()
    # Nothing labelled at all: a zero loss that still backpropagates, never NaN.
    zero, parts = multitask_loss(logits, {"emotion": torch.full((3,), IGNORE)})
    assert parts == {} and float(zero.detach()) == 0.0
    zero.backward()
    weighted, _ = multitask_loss(logits, {"emotion": torch.tensor([0, 2, 1])},
                                 class_weights={"emotion": torch.linspace(0.5, 2, 7)},
                                 task_weights={"emotion": 0.5})
    assert torch.isfinite(weighted)


def test_single_task_and_switched_off_parts() -> None:
    cfg = MERLBConfig(task="valence", modalities=["face", "voice"], fusion="tt")
    model = MERLB(cfg).eval()
    assert set(model.encoders) == {"face", "voice"} and model.head_names == ["valence"]
    x = random_inputs(model, batch=1, steps=2)
    with torch.no_grad():
        out = model(x["face"], x["voice"], None, None, x["mask"])
    assert list(out) == ["valence"] and out["valence"].shape == (1, 3)
    names = ["a", "b", "c"]
    cfg2 = MERLBConfig(heads={"emotion": list(EMOTIONS), "behaviour": names}, fusion="deep")
    assert MERLB(cfg2).head_names == ["emotion", "behaviour"]
    assert MERLBConfig.from_dict(cfg2.to_dict()) == cfg2
    with pytest.raises(ValueError):
        MERLBConfig(fusion="outer")
    with pytest.raises(ValueError):
        MERLBConfig(task="nonexistent")


@pytest.mark.parametrize("block, index, depth", [("top", 5, "face_top_layers"), ("mid", 2, "face_mid_layers")])
def test_grow_face_keeps_outputs_then_trains_the_new_layers(tmp_path: Path, block: str, index: int,
                                                            depth: str) -> None:
    from obs_merlb.model.grow import grow_face
    from obs_merlb.model.io import load_model, save_model

    faces, names = fer_batch()
    n = faces.shape[0]
    mask = torch.zeros(n, 1, 4)
    mask[..., 0] = 1
    face = faces[:, None]
    torch.manual_seed(0)
    model = MERLB(MERLBConfig(modalities=["face", "voice"], steps=1, modality_dropout=0.0))
    # Batch-norm statistics away from their defaults, as in a trained model.
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(face, None, None, None, mask)
    model.eval()
    before = model(face, None, None, None, mask)

    grown = grow_face(model, 2, block)
    assert getattr(grown.cfg, depth) == getattr(model.cfg, depth) + 2 and not grown.training
    assert len(grown.encoders["face"].features[index]) == 6
    n_params = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in grown.parameters()) > n_params
    after = grown(face, None, None, None, mask)
    for head in before:
        assert torch.allclose(before[head], after[head], atol=1e-5), head
    # The original is left as it was.
    assert getattr(model.cfg, depth) == 4 and len(model.encoders["face"].features[index]) == 4

    # Training reaches the new layers: first through the zero-started output
    # weights, then (once those moved) into the layers themselves.
    grown.train()
    opt = torch.optim.Adam(grown.parameters(), lr=1e-3)
    targets = {"emotion": torch.tensor([EMOTIONS.index(e) for e in names])}
    new_layer = grown.encoders["face"].features[index][-1]
    for _ in range(2):
        opt.zero_grad()
        loss, _ = multitask_loss(grown(face, None, None, None, mask), targets)
        loss.backward()
        opt.step()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in new_layer.parameters())

    # The depth travels with the weights.
    save_model(grown, tmp_path / "grown")
    assert getattr(load_model(tmp_path / "grown").cfg, depth) == 6
    with pytest.raises(ValueError, match="at least one"):
        grow_face(model, 0, block)
    with pytest.raises(ValueError, match="'top' or 'mid'"):
        grow_face(model, 1, "stem")


def test_face_width_scales_every_face_channel_and_keeps_width_one_as_the_seed_layout(tmp_path: Path) -> None:
    from safetensors import safe_open

    from obs_merlb.model.io import load_model, save_model

    cfg = dict(modalities=["face"], face_mid_layers=12, face_top_layers=12)
    # Width 1 is the layout every model saved before face_width has (their
    # config.json has no face_width): the seed's channel counts.
    narrow = MERLB(MERLBConfig(**cfg))
    enc = narrow.encoders["face"]
    assert [enc.stem[0][0].out_channels, enc.stem[1][0].out_channels] == [16, 32]
    assert enc.features[3][2].in_channels == 64 + 12 * 16            # transition after the middle block
    assert enc.head[1].in_features == 128 + 12 * 24                  # after the last block
    assert sum(p.numel() for p in enc.parameters()) == 512_600        # session 6's face encoder
    # The shipped model's config names its width, and its weights fit the layout it builds.
    from obs_merlb.model.config import load_config
    shipped_cfg, _ = load_config(ROOT / "assets" / "model")
    with safe_open(str(ROOT / "assets" / "model" / "model.safetensors"), "pt") as f:
        shipped = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys() if k.startswith("encoders.face.")}
    ours = {k: tuple(v.shape) for k, v in MERLB(shipped_cfg).state_dict().items() if k.startswith("encoders.face.")}
    assert ours == shipped

    wide = MERLB(MERLBConfig(**cfg, face_width=2.0))
    stem = wide.encoders["face"].stem
    assert [stem[0][0].out_channels, stem[1][0].out_channels] == [32, 64]
    # A dense layer's growth doubles too: the last block ends at 2 x (128 + 12 x 24) channels.
    assert wide.encoders["face"].head[1].in_features == 2 * narrow.encoders["face"].head[1].in_features
    face = torch.rand(3, 1, 1, 64, 64)
    mask = torch.tensor([[[1, 0, 0, 0]]] * 3, dtype=torch.float32)
    out = wide.eval()(face, None, None, None, mask)
    assert out["emotion"].shape == (3, len(EMOTIONS))
    # The width travels with the weights.
    save_model(wide, tmp_path / "wide")
    again = load_model(tmp_path / "wide")
    assert again.cfg.face_width == 2.0
    assert torch.allclose(again(face, None, None, None, mask)["emotion"], out["emotion"], atol=1e-5)
    with pytest.raises(ValueError, match="face_width"):
        MERLBConfig(face_width=0.1)


def test_voice_width_scales_the_voice_encoder_and_keeps_width_one_as_the_seed_layout(tmp_path: Path) -> None:
    from obs_merlb.model.io import load_model, save_model

    narrow = MERLB(MERLBConfig(modalities=["voice"])).encoders["voice"]
    assert [layer[0].out_channels for layer in narrow.body] == [24, 32, 32, 64, 64, 128]
    assert sum(p.numel() for p in narrow.parameters()) == 178_952      # every model before voice_width
    wide_model = MERLB(MERLBConfig(modalities=["voice"], voice_width=1.5)).eval()
    wide = wide_model.encoders["voice"]
    assert [layer[0].out_channels for layer in wide.body] == [36, 48, 48, 96, 96, 192]
    assert wide.head[1].in_features == 2 * 192                         # mean and max over time
    voice = torch.randn(2, 8, 1, 64, 100)
    mask = torch.tensor([[[0, 1, 0, 0]] * 8] * 2, dtype=torch.float32)
    out = wide_model(None, voice, None, None, mask)
    assert out["emotion"].shape == (2, len(EMOTIONS))
    save_model(wide_model, tmp_path / "wide")
    again = load_model(tmp_path / "wide")
    assert again.cfg.voice_width == 1.5
    assert torch.allclose(again(None, voice, None, None, mask)["emotion"], out["emotion"], atol=1e-5)
    for bad in (0.1, 5, True, "2"):
        with pytest.raises(ValueError, match="voice_width"):
            MERLBConfig(voice_width=bad)


def test_training_forward_under_autocast_keeps_the_encoders_low_precision_output() -> None:
    # A CUDA run trains under autocast; the steps of missing data are filled
    # in the encoder's dtype (bf16 here, as on an H100), not float32.
    model = MERLB(MERLBConfig(modalities=["face", "voice"])).train()
    face = torch.rand(2, 3, 1, 64, 64)
    mask = torch.ones(2, 3)
    mask[0, 1] = 0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model._encode_steps("face", face, mask)
    assert out.dtype == torch.bfloat16 and out.shape == (2, 3, model.cfg.face_dim)
    assert torch.count_nonzero(out[0, 1]) == 0 and torch.count_nonzero(out[0, 0]) > 0
