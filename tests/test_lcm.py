"""Few-step sampling with a LoRA (e.g. an LCM-LoRA): loaded through diffusers' loader, fused,
recorded in info() and recipes, checked on replay; every bad LoRA is one clear line.

The LoRA is built here for the tiny test model's UNet (peft's LoraConfig on its attention
projections, random non-zero B so it changes the output) and saved in the diffusers format
that ``load_lora_weights`` reads, as the real lcm-lora-sdv1-5 is.
"""
from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from diffusers.utils import convert_state_dict_to_diffusers
from PIL import Image
from safetensors.torch import load_file, save_file

from core import loading
from core.cli import apply_recommended, build_parser, main
from core.engine import Engine
from core.errors import StudioError
from core.loading import LoadOptions, load_model
from core.model_settings import SETTINGS_FILE, read_recommended
from core.outputs import replay, save_result
from core.recipe import read_recipe
from core.requests import GenerationRequest

LCM = dict(scheduler="lcm", steps=4, guidance_scale=1.5)  # what an LCM-LoRA is run with


def build_lora(unet_folder: Path, out: Path, seed: int = 0) -> Path:
    """A rank-4 LoRA on the UNet's attention projections, saved as pytorch_lora_weights.safetensors."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = UNet2DConditionModel.from_pretrained(unet_folder)
    torch.manual_seed(seed)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                init_lora_weights=False))  # random A and B: a LoRA that changes the output
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionPipeline.save_lora_weights(out, unet_lora_layers=layers, safe_serialization=True)
    return out / "pytorch_lora_weights.safetensors"


@pytest.fixture(scope="module")
def lora_file(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_lora(tiny_model_dir / "unet", tmp_path_factory.mktemp("lora"))


@pytest.fixture(scope="module")
def lora_engine(tiny_model_dir: Path, lora_file: Path) -> Engine:
    return Engine.load(model=str(tiny_model_dir), device="cpu", lora=str(lora_file))


def latents(engine: Engine, **settings) -> torch.Tensor:
    request = GenerationRequest(prompt="a red sun over purple mountains", seed=3, **{"steps": 3, **settings})
    return engine.generate(request).latents


def test_lora_changes_the_output_and_scale_zero_does_not(tiny_engine, lora_engine, tiny_model_dir,
                                                         lora_file) -> None:
    plain = latents(tiny_engine)
    with_lora = latents(lora_engine)
    assert (with_lora - plain).abs().mean() > 0.01 * plain.abs().mean()
    zero = Engine.load(model=str(tiny_model_dir), device="cpu", lora=str(lora_file), lora_scale=0.0)
    assert torch.equal(latents(zero), plain)  # W + 0 * BA is W: bit-exact, no tolerance needed
    assert torch.equal(latents(tiny_engine), plain)  # the shared plain model was not touched
    unet = lora_engine.bundle.unet  # fused, and the adapter layers dropped: plain modules run
    assert not any("lora" in name for name, _ in unet.named_modules())
    assert getattr(unet, "peft_config", None) in (None, {})


def test_lcm_scheduler_at_four_steps_with_the_lora(lora_engine, lora_file) -> None:
    result = lora_engine.generate(GenerationRequest(prompt="a lake at night", seed=1, **LCM))
    assert torch.isfinite(result.latents).all() and result.images[0].size == (64, 64)
    sha = hashlib.sha256(lora_file.read_bytes()).hexdigest()[:12]
    assert lora_engine.info()["lora"] == {"file": "pytorch_lora_weights.safetensors",
                                          "location": str(lora_file.resolve()), "sha256": sha, "scale": 1.0}


def test_recipe_records_the_lora_and_replay_checks_it(tiny_model_dir, tiny_engine, lora_file, tmp_path) -> None:
    moved = tmp_path / "lcm" / "lcm-lora.safetensors"
    moved.parent.mkdir()
    shutil.copy(lora_file, moved)
    engine = Engine.load(model=str(tiny_model_dir), device="cpu", lora=str(moved), lora_scale=0.5)
    [path] = save_result(engine.generate(GenerationRequest(prompt="a castle", seed=2, **LCM)), engine.bundle,
                         tmp_path / "a.png")
    record = read_recipe(path)["model"]["lora"]
    assert record == engine.info()["lora"] and record["scale"] == 0.5 and record["file"] == "lcm-lora.safetensors"
    assert f'Lora hashes: "lcm-lora: {record["sha256"]}", Lora scale: 0.5' in Image.open(path).info["parameters"]
    image, _, again = replay(path)
    assert np.array_equal(np.asarray(image), np.asarray(Image.open(path).convert("RGB")))
    assert again.info()["lora"] == record

    base = LoadOptions(device="cpu")
    with pytest.raises(StudioError, match="made with LoRA 'lcm-lora.safetensors' .* give --lora FILE:0.5"):
        replay(path, LoadOptions(device="cpu", lora=str(moved)))  # the scale must be the recipe's
    other = tmp_path / "other.safetensors"
    save_file({k: v * 2 for k, v in load_file(lora_file).items()}, other)
    with pytest.raises(StudioError, match="is not the one the recipe was made with"):
        replay(path, LoadOptions(device="cpu", lora=str(other), lora_scale=0.5))
    shutil.move(moved, tmp_path / "kept.safetensors")
    with pytest.raises(StudioError, match="which is no longer at .* give its file with --lora FILE"):
        replay(path, base)
    image, _, _ = replay(path, LoadOptions(device="cpu", lora=str(tmp_path / "kept.safetensors"), lora_scale=0.5))
    assert np.array_equal(np.asarray(image), np.asarray(Image.open(path).convert("RGB")))

    [plain] = save_result(tiny_engine.generate(GenerationRequest(prompt="a castle", seed=2, steps=2)),
                          tiny_engine.bundle, tmp_path / "plain.png")
    assert "lora" not in read_recipe(plain)["model"]
    with pytest.raises(StudioError, match="made without a LoRA: replay it without --lora"):
        replay(plain, LoadOptions(device="cpu", lora=str(lora_file)))


def test_cli_lora_flag_and_replay(tiny_model_dir, lora_file, tmp_path, capsys) -> None:
    out = tmp_path / "cli.png"
    code = main(["txt2img", "--model", str(tiny_model_dir), "--lora", f"{lora_file}:0.75", "--scheduler", "lcm",
                 "--steps", "4", "--cfg", "1.5", "--seed", "5", "--prompt", "a fox", "--out", str(out), "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["lora"]["scale"] == 0.75 and summary["lora"]["file"] == lora_file.name
    assert main(["replay", str(out), "--out", str(tmp_path / "again.png"), "--quiet"]) == 0
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(tmp_path / "again.png")))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["txt2img", "--model", str(tiny_model_dir), "--lora", f"{lora_file}:strong", "--prompt", "p",
              "--out", str(out)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "scale after ':'" in err and err.count("\n") == 1
    code = main(["txt2img", "--model", str(tiny_model_dir), "--lora", f"{lora_file}:9", "--prompt", "p",
                 "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "LoRA scale must be a number from 0 to 4" in err and err.count("\n") == 1


def test_model_folder_recommends_the_lora_and_is_never_read_unasked(tiny_model_dir, lora_file, tmp_path) -> None:
    model = tmp_path / "sd-lcm"
    shutil.copytree(tiny_model_dir, model)
    (model / "lcm_lora").mkdir()
    shutil.copy(lora_file, model / "lcm_lora" / "pytorch_lora_weights.safetensors")
    parser = build_parser()
    argv = ["txt2img", "--model", str(model), "--prompt", "p", "--out", "o.png"]
    args = parser.parse_args(argv)
    apply_recommended(args)
    assert args.lora is None and args.scheduler == "default"  # a LoRA in the folder is not loaded for being there
    (model / SETTINGS_FILE).write_text(json.dumps({"recommended": {
        "scheduler": "lcm", "steps": 4, "guidance_scale": 1.5, "lora": "lcm_lora/pytorch_lora_weights.safetensors"}}))
    args = parser.parse_args(argv)
    apply_recommended(args)
    assert (args.scheduler, args.steps, args.cfg) == ("lcm", 4, 1.5)
    assert args.lora == (str((model / "lcm_lora" / "pytorch_lora_weights.safetensors").resolve()), None)
    args = parser.parse_args(argv + ["--lora", f"{lora_file}:0.5", "--scheduler", "ddim"])
    apply_recommended(args)
    assert args.lora == (str(lora_file), 0.5) and args.scheduler == "ddim"  # what the person sets wins
    args = parser.parse_args(["stroke", "--model", str(tiny_model_dir), "--strokes", "s.png", "--prompt", "p",
                              "--out", "o.png"])
    apply_recommended(args)
    assert args.scheduler == "ddim"  # stroke's own default stays where nothing is recommended


@pytest.mark.parametrize("settings, message", [
    ({"lora": "/abs/x.safetensors"}, "inside the model folder"),
    ({"lora": "../x.safetensors"}, "inside the model folder"),
    ({"lora": 3}, "lora must be text"),
    ({"lora_scale": 9}, "lora_scale must be between 0 and 4"),
    ({"scheduler": "turbo"}, "Unknown scheduler 'turbo'"),
])
def test_bad_recommendations_are_one_line(tmp_path, settings, message) -> None:
    (tmp_path / SETTINGS_FILE).write_text(json.dumps({"recommended": settings}))
    with pytest.raises(StudioError, match=message) as info:
        read_recommended(tmp_path)
    assert "\n" not in str(info.value)


def bad_lora(kind: str, good: Path, folder: Path, tiny_model_dir: Path) -> Path:
    """A LoRA file that is wrong in one way."""
    weights = load_file(good)
    path = folder / "bad.safetensors"
    if kind == "missing":
        return folder / "absent.safetensors"
    if kind in ("bin", "pt"):
        path = folder / f"lora.{kind}"
        path.write_bytes(b"\x80\x02}q\x00.")  # a pickle: refused by its name, never opened
    elif kind == "text":
        path = folder / "lora.txt"
        path.write_text("hello")
    elif kind == "garbage":
        path.write_bytes(b"\x80\x02" + bytes(range(256)) * 4)  # a pickle renamed .safetensors
    elif kind == "model":
        shutil.copy(tiny_model_dir / "unet" / "diffusion_pytorch_model.safetensors", path)
    elif kind == "renamed":  # names of layers this UNet does not have
        save_file({k.replace("transformer_blocks", "blocks"): v for k, v in weights.items()}, path)
    elif kind == "partly":  # half of its layers match, half do not: diffusers only warns
        save_file({(k.replace("attn1", "attn9") if "up_blocks" in k else k): v for k, v in weights.items()}, path)
    elif kind == "shape":  # made for a wider model
        save_file({k: (torch.randn(v.shape[0], v.shape[1] * 2) if "lora.down" in k else v)
                   for k, v in weights.items()}, path)
    elif kind == "nan":
        save_file({k: (torch.full_like(v, math.nan) if i == 1 else v) for i, (k, v) in enumerate(weights.items())},
                  path)
    return path


@pytest.mark.parametrize("kind, message", [
    ("missing", "LoRA file .* not found: check the path; the LCM-LoRA for SD 1.5 is `huggingface-cli download"),
    ("bin", "is a pickle file; only .safetensors LoRAs are loaded"),
    ("pt", "is a pickle file; only .safetensors LoRAs are loaded"),
    ("text", "must be a .safetensors file"),
    ("garbage", "is not a readable safetensors file"),
    ("model", "holds no LoRA weights"),
    ("renamed", "does not fit this model \\(none of its layers names a layer of this model\\)"),
    ("partly", "does not fit this model: 8 of its 32 layers name no layer"),  # up_blocks.*.attn1
    ("shape", "does not fit this model \\(its layers' shapes are not this model's\\)"),
    ("nan", "holds NaN or infinite weights"),
])
def test_bad_lora_is_one_line_and_nothing_is_loaded(kind, message, lora_file, tiny_model_dir, tmp_path) -> None:
    path = bad_lora(kind, lora_file, tmp_path, tiny_model_dir)
    cached = set(loading._CACHE)
    with pytest.raises(StudioError, match=message) as info:
        load_model(LoadOptions(model=str(tiny_model_dir), device="cpu", lora=str(path)))
    assert "\n" not in str(info.value)
    assert set(loading._CACHE) == cached  # no model, with or without the LoRA, was kept


@pytest.mark.parametrize("scale", [-0.5, 4.5, math.nan, math.inf, True, "1"])
def test_bad_scale_is_one_line(scale) -> None:
    with pytest.raises(StudioError, match="LoRA scale must be a number from 0 to 4"):
        LoadOptions(lora="x.safetensors", lora_scale=scale)
