"""Single-file checkpoints: export the tiny model in the original (LDM) layout and load it back, offline."""
from __future__ import annotations

import shutil
import socket
from pathlib import Path
from typing import Iterator

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint
from safetensors import safe_open
from safetensors.torch import load_file

from training.checkpoint_export import (CLIP_PREFIX, UNET_PREFIX, VAE_PREFIX, export_single_file, main, unet_to_ldm,
                                    vae_to_ldm)
from core.engine import Engine
from core.errors import StudioError
from core.requests import GenerationRequest

PARTS = ("unet", "vae", "text_encoder")


class NetworkUsed(RuntimeError):
    """Raised (and recorded) by the guard below: not an OSError, so no loader can swallow it as 'offline'."""


@pytest.fixture()
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Any TCP connection attempt fails the test, even one that a library catches."""
    attempts: list[str] = []

    def deny(*args: object, **kwargs: object) -> None:
        attempts.append(repr(args[1:] or args))
        raise NetworkUsed(f"network access attempted: {args[1:] or args}")

    monkeypatch.setattr(socket.socket, "connect", deny)
    monkeypatch.setattr(socket.socket, "connect_ex", deny)
    monkeypatch.setattr(socket, "create_connection", deny)
    yield attempts
    assert not attempts, f"the single-file load tried the network: {attempts}"


@pytest.fixture(scope="module")
def checkpoint(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_single_file(tiny_model_dir, tmp_path_factory.mktemp("single-file") / "tiny-sd.safetensors")


@pytest.fixture(scope="module")
def configs_only(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model's folder without any weights: what `--include '*.json' '*.txt'` downloads."""
    dest = tmp_path_factory.mktemp("configs") / "tiny-sd-configs"
    shutil.copytree(tiny_model_dir, dest, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    return dest


def _state(engine: Engine, part: str) -> dict[str, torch.Tensor]:
    return getattr(engine.bundle, part).state_dict()


def _assert_same_weights(loaded: Engine, reference: Engine) -> None:
    for part in PARTS:
        got, want = _state(loaded, part), _state(reference, part)
        assert got.keys() == want.keys(), part
        for key, tensor in want.items():
            assert got[key].dtype == tensor.dtype and torch.equal(got[key], tensor), f"{part}: {key} differs"


# --- the file ----------------------------------------------------------------------------------

def test_export_writes_original_layout(checkpoint: Path, tiny_model_dir: Path) -> None:
    ckpt = load_file(str(checkpoint))
    diffusers_counts = {part: len(load_file(str(next((tiny_model_dir / part).glob("*.safetensors")))))
                        for part in PARTS}
    by_prefix = {p: [k for k in ckpt if k.startswith(p)] for p in (UNET_PREFIX, VAE_PREFIX, CLIP_PREFIX)}
    assert sum(map(len, by_prefix.values())) == len(ckpt)  # nothing outside the three models
    assert [len(v) for v in by_prefix.values()] == [diffusers_counts[p] for p in PARTS]  # nothing dropped
    for key in ("model.diffusion_model.input_blocks.0.0.weight", "model.diffusion_model.input_blocks.2.0.op.weight",
                "model.diffusion_model.middle_block.1.proj_in.weight", "model.diffusion_model.out.2.bias",
                "model.diffusion_model.output_blocks.1.2.conv.weight",
                "first_stage_model.decoder.up.3.upsample.conv.bias",
                "first_stage_model.encoder.down.1.block.0.nin_shortcut.weight",
                "first_stage_model.decoder.norm_out.weight",
                "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight"):
        assert key in ckpt, key
    for side in ("encoder", "decoder"):  # the original VAE's mid attention is made of 1x1 convolutions
        for name in ("q", "k", "v", "proj_out"):
            assert ckpt[f"first_stage_model.{side}.mid.attn_1.{name}.weight"].shape == (16, 16, 1, 1)
    with safe_open(str(checkpoint), "pt") as f:
        assert f.metadata()["format"] == "pt"


@pytest.mark.parametrize("layers_per_block", [1, 2])
def test_conversion_inverts_diffusers_converters(layers_per_block: int) -> None:
    """SD 1.5's block layout (3 cross-attention levels + 1 plain, up blocks with and without attention),
    scaled down: diffusers' own LDM -> diffusers converters give back every tensor, and nothing more."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=layers_per_block,
        block_out_channels=(8, 8, 16, 16), norm_num_groups=4, cross_attention_dim=8, attention_head_dim=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
    vae = AutoencoderKL(block_out_channels=(4, 8, 8), layers_per_block=layers_per_block, norm_num_groups=4,
                        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3)
    for model, to_ldm, prefix, back in ((unet, unet_to_ldm, UNET_PREFIX, convert_ldm_unet_checkpoint),
                                        (vae, vae_to_ldm, VAE_PREFIX, convert_ldm_vae_checkpoint)):
        state = model.state_dict()
        ldm = {prefix + k: v for k, v in to_ldm(state, dict(model.config)).items()}
        restored = back(ldm, dict(model.config))
        assert restored.keys() == state.keys()
        assert all(torch.equal(restored[k], v) for k, v in state.items())
    # up block 0 (no attention) ends with its upsampler in slot 1 of its last layer, as in SD 1.5
    assert f"output_blocks.{layers_per_block}.1.conv.weight" in unet_to_ldm(unet.state_dict(), dict(unet.config))


def test_export_fp16_and_refusals(tiny_model_dir: Path, checkpoint: Path, tmp_path: Path) -> None:
    half = export_single_file(tiny_model_dir, tmp_path / "half.safetensors", dtype="fp16")
    full, small = load_file(str(checkpoint)), load_file(str(half))
    assert small.keys() == full.keys()
    assert all(small[k].dtype == torch.float16 and torch.equal(small[k], full[k].half()) for k in full)
    with pytest.raises(StudioError, match="already exists"):
        export_single_file(tiny_model_dir, half)
    with pytest.raises(StudioError, match="safetensors"):
        export_single_file(tiny_model_dir, tmp_path / "model.ckpt")
    with pytest.raises(StudioError, match="not found"):
        export_single_file(tmp_path / "nowhere", tmp_path / "x.safetensors")
    with pytest.raises(StudioError, match="missing"):
        export_single_file(tmp_path, tmp_path / "y.safetensors")  # a folder, but no model in it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["half.safetensors"]  # no partial files left


def test_cli(tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli.safetensors"
    assert main([str(tiny_model_dir), str(out)]) == 0
    assert str(out) in capsys.readouterr().out and out.is_file()
    assert main([str(tiny_model_dir), str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main([str(tiny_model_dir), str(out), "--force", "--dtype", "bf16"]) == 0
    assert main([str(tiny_model_dir), str(tmp_path / "cli.ckpt")]) == 2
    assert "safetensors" in capsys.readouterr().err


# --- loading it ---------------------------------------------------------------------------------

def test_single_file_loads_offline_like_the_folder(checkpoint: Path, tiny_model_dir: Path, tiny_engine: Engine,
                                                   no_network: list[str]) -> None:
    engine = Engine.load(model=str(checkpoint), config=str(tiny_model_dir), device="cpu")
    assert engine.bundle.source == "single_file" and engine.bundle.name == "tiny-sd"
    _assert_same_weights(engine, tiny_engine)
    request = GenerationRequest(prompt="a red sun over purple mountains", steps=3, seed=123, guidance_scale=5.0)
    torch.testing.assert_close(engine.generate(request).latents, tiny_engine.generate(request).latents,
                               atol=1e-5, rtol=0)


def test_weights_come_from_the_file(checkpoint: Path, configs_only: Path, tiny_engine: Engine,
                                    no_network: list[str]) -> None:
    """With a config folder that has no weights at all, every tensor must have come from the checkpoint."""
    assert not list(configs_only.rglob("*.safetensors"))
    engine = Engine.load(model=str(checkpoint), config=str(configs_only), device="cpu")
    _assert_same_weights(engine, tiny_engine)


def test_single_file_errors(tmp_path: Path, tiny_model_dir: Path) -> None:
    pickled = tmp_path / "model.ckpt"
    pickled.write_bytes(b"not really a pickle")
    with pytest.raises(StudioError, match="safetensors"):
        Engine.load(model=str(pickled), config=str(tiny_model_dir), device="cpu")
    with pytest.raises(StudioError, match="not found"):
        Engine.load(model=str(tmp_path / "missing.safetensors"), config=str(tiny_model_dir), device="cpu")
