"""PNGs made by an earlier version of the engine (``tests/fixtures/replay``: txt2img, img2img,
GradOP+, GradOP+ fast with words, SDEdit, regions, a panorama; made by its ``make.py``) still
replay to the same pixels with today's engine, on the bundled demo model.

They were made with 2 torch threads on a CPU of the kind ``made-on.json`` names; replayed the
same way they come out bit-exact, except that OpenMP reductions may round a few values (seen:
7 of 49152 in one of the seven) by one level. So: at most one level and 0.1% of the values
apart on that kind of CPU; at most two levels and 1% elsewhere, where float kernels differ.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.loading import LoadOptions
from core.outputs import replay
from core.recipe import read_recipe

HERE = Path(__file__).resolve().parent / "fixtures" / "replay"
MODEL = Path(__file__).resolve().parent.parent / "pretrained_models" / "studio-demo"
MADE_ON = json.loads((HERE / "made-on.json").read_text())
SAME_KIND = (MADE_ON["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
             and MADE_ON["torch"] == torch.__version__)


@pytest.fixture
def two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", sorted(MADE_ON["files"]))
def test_an_old_png_replays_to_the_same_pixels(name: str, two_threads) -> None:
    path = HERE / MADE_ON["files"][name]
    assert read_recipe(path)["request"]  # it carries its recipe
    image, _, _ = replay(path, LoadOptions(model=str(MODEL), device="cpu"))
    old = np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)
    new = np.asarray(image.convert("RGB"), dtype=np.int16)
    assert new.shape == old.shape
    levels, share = (1, 0.001) if SAME_KIND else (2, 0.01)
    diff = np.abs(new - old)
    assert diff.max() <= levels and np.count_nonzero(diff) <= share * diff.size, (
        f"{name}: {np.count_nonzero(diff)} of {diff.size} values differ, by up to {diff.max()} levels")
