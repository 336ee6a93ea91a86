"""Loading: each form (folder path, name, hub id, default), each error, caching, options."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core.errors import StudioError
from core.loading import LoadOptions, check_model_folder, default_model, load_model, resolve_model

ROOT = Path(__file__).resolve().parent.parent


def test_folder_path_loads_real_components(tiny_model_dir: Path) -> None:
    bundle = load_model(LoadOptions(model=str(tiny_model_dir), device="cpu"))
    assert bundle.source == "folder" and bundle.name == tiny_model_dir.name
    assert type(bundle.unet).__name__ == "UNet2DConditionModel"
    assert type(bundle.vae).__name__ == "AutoencoderKL"
    assert bundle.device.type == "cpu" and bundle.dtype == torch.float32
    assert bundle.vae_scale_factor == 8 and bundle.native_size == 64
    assert not any(p.requires_grad for p in bundle.unet.parameters())


def test_loads_are_cached_per_options(tiny_model_dir: Path) -> None:
    a = load_model(LoadOptions(model=str(tiny_model_dir), device="cpu"))
    b = load_model(LoadOptions(model=str(tiny_model_dir), device="auto"))  # auto resolves to cpu here
    c = load_model(LoadOptions(model=str(tiny_model_dir), device="cpu", attention_slicing=True))
    assert a is b and a is not c


def test_name_under_models_dir_and_default(tiny_model_dir: Path, tmp_path: Path, monkeypatch) -> None:
    models = tmp_path / "models"
    models.mkdir()
    monkeypatch.setenv("STUDIO_MODELS_DIR", str(models))
    with pytest.raises(StudioError, match="No model found"):
        default_model()
    shutil.copytree(tiny_model_dir, models / "zz-other")
    shutil.copytree(tiny_model_dir, models / "studio-demo")
    assert default_model() == "studio-demo"
    assert resolve_model("zz-other") == ("folder", str((models / "zz-other").resolve()))
    assert load_model(LoadOptions(device="cpu")).name == "studio-demo"


def test_hub_id_and_bad_specs(tmp_path: Path) -> None:
    assert resolve_model("stable-diffusion-v1-5/stable-diffusion-v1-5") == (
        "hub", "stable-diffusion-v1-5/stable-diffusion-v1-5")
    with pytest.raises(StudioError, match="not found"):
        resolve_model(str(tmp_path / "missing"))
    with pytest.raises(StudioError, match="only .safetensors"):
        resolve_model("model.ckpt")
    with pytest.raises(StudioError, match="not found"):
        resolve_model(str(tmp_path / "missing.safetensors"))


def test_hub_id_loads_through_the_hub_code_path(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A hub id resolves through huggingface_hub's cache (offline: a cache we lay out here)."""
    repo = tmp_path / "hub" / "models--studio-tests--tiny-sd"
    snapshot = repo / "snapshots" / ("0" * 40)
    shutil.copytree(tiny_model_dir, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}
    out = subprocess.run([sys.executable, "-m", "core", "info", "--model", "studio-tests/tiny-sd", "--json"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["source"] == "hub" and info["model"] == "studio-tests/tiny-sd"


@pytest.mark.parametrize("remove, message", [
    ("model_index.json", "model_index.json is missing"),
    ("unet", "missing unet/"),
    ("vae/config.json", "missing vae/config.json"),
    ("text_encoder/model.safetensors", "missing text_encoder/\\*.safetensors"),
    ("scheduler/scheduler_config.json", "scheduler/scheduler_config.json"),
])
def test_incomplete_folder_names_what_is_missing(tiny_model_dir: Path, tmp_path: Path, remove, message) -> None:
    broken = shutil.copytree(tiny_model_dir, tmp_path / "broken")
    target = broken / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(StudioError, match=message) as err:
        load_model(LoadOptions(model=str(broken), device="cpu"))
    assert "README" in str(err.value)


def test_pickle_only_weights_are_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    broken = shutil.copytree(tiny_model_dir, tmp_path / "pickled")
    (broken / "unet" / "diffusion_pytorch_model.safetensors").rename(broken / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(StudioError, match="only pickle weights.*safetensors"):
        check_model_folder(broken)


def test_device_and_dtype_errors(tiny_model_dir: Path) -> None:
    with pytest.raises(StudioError, match="fp16 is not supported on the CPU"):
        load_model(LoadOptions(model=str(tiny_model_dir), device="cpu", dtype="fp16"))
    with pytest.raises(StudioError, match="Unknown precision"):
        load_model(LoadOptions(model=str(tiny_model_dir), device="cpu", dtype="fp8"))
    if not torch.cuda.is_available():
        with pytest.raises(StudioError, match="CUDA is not available"):
            load_model(LoadOptions(model=str(tiny_model_dir), device="cuda"))


def test_low_memory_switches(tiny_model_dir: Path) -> None:
    bundle = load_model(LoadOptions(model=str(tiny_model_dir), device="cpu", vae_tiling=True, cpu_offload=True,
                                    attention_slicing=True))
    assert bundle.vae.use_tiling
    assert any("CPU offload needs a CUDA GPU" in w for w in bundle.warnings)
    assert bundle.info()["cpu_offload"] is False and bundle.info()["vae_tiling"] is True


def test_bf16_on_cpu_runs(tiny_model_dir: Path) -> None:
    from core.engine import Engine
    from core.requests import GenerationRequest

    engine = Engine.load(model=str(tiny_model_dir), device="cpu", dtype="bf16")
    assert engine.bundle.unet.dtype == torch.bfloat16
    result = engine.generate(GenerationRequest(prompt="a red sun", steps=2, seed=1))
    assert result.images[0].size == (64, 64)


def test_import_core_does_not_import_streamlit() -> None:
    code = "import sys, core, core.cli; assert not any(m.startswith('streamlit') for m in sys.modules), 'streamlit'"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
