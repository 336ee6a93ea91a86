"""Tiny decoders (AutoencoderTiny / TAESD layout): distillation, the check on load, fast guidance and previews."""
from __future__ import annotations

import dataclasses

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.engine import Engine
from core.errors import StudioError
from core.stroke_guidance import StrokeRequest
from core.tiny_decoder import load_tiny, tiny_decoder
from training.tiny_decoder import build_tiny, cli, distil
from training.tiny_model import build_tiny_sd


@pytest.fixture(scope="module")
def distilled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SD with a tiny decoder distilled from its VAE (a few seconds)."""
    model = build_tiny_sd(tmp_path_factory.mktemp("tiny-with-taesd") / "model")
    torch.manual_seed(0)
    distil(model, model / "vae_tiny", steps=150, channels=16, images=8, crop=32, batch_size=4, lr=2e-3,
           noise=0.5, colour_weight=1.0, checkpoint_dir=model.parent / "ck", resume=False, checkpoint_every=100,
           log=lambda *_: None)
    return model


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("vae_tiny"))
    return dst


def test_distillation_writes_a_complete_checked_tiny_autoencoder(distilled: Path) -> None:
    folder = distilled / "vae_tiny"
    report = json.loads((folder / "distill.json").read_text())
    assert report["steps"] == 150 and report["decoder_parameters"] < report["parameters"]
    assert report["psnr_vs_vae"] > 10 and report["agreement_mean_error"] < 0.12
    assert sorted(p.suffix for p in folder.iterdir()) == [".json", ".json", ".safetensors"]
    assert (distilled.parent / "ck" / "tiny-0000100" / "tiny.safetensors").is_file()  # resumable
    engine = Engine.load(model=str(distilled), device="cpu")
    tiny, warning = tiny_decoder(engine.bundle, shared=None)
    assert tiny is not None and warning is None


def test_fast_gradop_plus_and_previews_use_the_tiny_decoder(distilled: Path) -> None:
    engine = Engine.load(model=str(distilled), device="cpu")
    tiny, _ = tiny_decoder(engine.bundle, shared=None)
    calls = []
    decode = tiny.decode
    tiny.decode = lambda z, *a, **k: (calls.append(tuple(z.shape)), decode(z, *a, **k))[1]
    try:
        strokes = Image.new("RGB", (64, 64), "#e53935")
        previews = []
        request = StrokeRequest(prompt="a red sun", strokes=strokes, fast=True, steps=4, grad_steps=2, seed=1,
                                renderer="auto")
        result = engine.run(request, callback=lambda event: previews.append(event))
        assert result.losses and calls and all(shape[-1] == 8 for shape in calls)  # latents in, full size out
        assert result.request.renderer == "tiny"  # what the recipe records: a replay renders the same way
        calls.clear()
        linear = engine.run(dataclasses.replace(request, renderer="linear"))  # old recipes: the field's default
        assert not calls and not np.array_equal(np.asarray(linear.images[0]), np.asarray(result.images[0]))
    finally:
        tiny.decode = decode
    preview = engine.preview(torch.zeros(1, 4, 8, 8))
    assert preview.size == (64, 64)  # full size, not the linear map's 4x latent size


def test_a_tiny_decoder_of_another_latent_space_is_ignored_with_one_line(distilled: Path, tmp_path: Path) -> None:
    model = copy_model(distilled, tmp_path / "model")
    torch.manual_seed(3)
    build_tiny(16, 4, 4).save_pretrained(model / "vae_tiny", safe_serialization=True)  # untrained: wrong
    engine = Engine.load(model=str(model), device="cpu")
    tiny, warning = tiny_decoder(engine.bundle, shared=None)
    assert tiny is None and "does not match this model's VAE" in warning and "\n" not in warning
    assert engine.preview(torch.zeros(1, 4, 8, 8)).size == (32, 32)  # the linear map's preview


def test_a_pickled_or_broken_tiny_decoder_is_refused(tmp_path: Path) -> None:
    pickled = tmp_path / "taesd"
    pickled.mkdir()
    (pickled / "config.json").write_text("{}")
    (pickled / "diffusion_pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(StudioError, match="no .safetensors weights"):
        load_tiny(pickled, torch.device("cpu"), torch.float32)
    (pickled / "diffusion_pytorch_model.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(StudioError, match="not a readable AutoencoderTiny"):
        load_tiny(pickled, torch.device("cpu"), torch.float32)


def test_the_distiller_cli_says_what_is_wrong_in_one_line(tmp_path: Path, capsys) -> None:
    assert cli(["--model", str(tmp_path / "nowhere"), "--steps", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1


def test_an_engine_without_a_tiny_decoder_keeps_the_linear_map(tiny_engine: Engine) -> None:
    assert tiny_decoder(tiny_engine.bundle, shared=None) == (None, None)
    image = tiny_engine.preview(torch.zeros(1, 4, 8, 8))
    assert image.size == (32, 32) and np.asarray(image).dtype == np.uint8


def test_without_a_tiny_decoder_auto_renders_linearly_and_tiny_is_refused(tiny_engine: Engine) -> None:
    strokes = Image.new("RGB", (64, 64), "#e53935")
    request = StrokeRequest(prompt="a red sun", strokes=strokes, fast=True, steps=4, grad_steps=2, seed=1,
                            renderer="auto")
    auto = tiny_engine.run(request)
    linear = tiny_engine.run(dataclasses.replace(request, renderer="linear"))
    assert auto.request.renderer == "linear" and np.array_equal(np.asarray(auto.images[0]), np.asarray(linear.images[0]))
    with pytest.raises(StudioError, match="no usable tiny decoder") as info:
        tiny_engine.run(dataclasses.replace(request, renderer="tiny"))
    assert "\n" not in str(info.value)
    with pytest.raises(StudioError, match="Unknown renderer"):
        dataclasses.replace(request, renderer="taesd")


def test_a_model_can_recommend_the_linear_map_for_auto(distilled: Path, tmp_path: Path) -> None:
    """The bundled model does (its tiny decoder costs nearly what its small VAE does; bench/results/tiny-decoder.md)."""
    model = tmp_path / "model"
    shutil.copytree(distilled, model)  # with its vae_tiny
    (model / "studio.json").write_text('{"recommended": {"fast_renderer": "linear"}}')
    engine = Engine.load(model=str(model), device="cpu")
    request = StrokeRequest(prompt="a red sun", strokes=Image.new("RGB", (64, 64), "#e53935"), fast=True, steps=4,
                            grad_steps=2, renderer="auto")
    assert engine.run(request).request.renderer == "linear"
    assert engine.run(dataclasses.replace(request, renderer="tiny")).request.renderer == "tiny"
    assert tiny_decoder(engine.bundle, shared=None)[0] is not None  # previews still use it
