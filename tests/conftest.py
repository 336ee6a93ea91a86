"""Shared fixtures: tiny SD-format models built locally and saved with save_pretrained."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.engine import Engine
from training.tiny_model import build_tiny_sd


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tiny tensors: one thread is faster than OpenMP's barriers, and steady on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny epsilon-prediction SD folder (64 px native, 8x8 latents)."""
    return build_tiny_sd(tmp_path_factory.mktemp("models") / "tiny-sd")


@pytest.fixture(scope="session")
def tiny_v_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same architecture with v-prediction (SD 2.x style)."""
    return build_tiny_sd(tmp_path_factory.mktemp("models") / "tiny-sd-v", seed=1, prediction_type="v_prediction")


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dir: Path) -> Engine:
    return Engine.load(model=str(tiny_model_dir), device="cpu")
