"""The README's "Add a method" example, run as written: a new module and its METHODS line make a
request kind that Engine.run runs, recipes record and replay remakes bit-exactly."""
from __future__ import annotations

import ast
import re
import sys
import types
from pathlib import Path

import pytest
import torch

from core import Engine, GenerationRequest, StudioError, replay, save_result
from core.engine import RUNNERS
from core.methods import METHODS, register_method, resolve
from core.recipe import REQUEST_KINDS

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_method() -> tuple[str, str]:
    """(the module's code, its METHODS line) from the README's "Add a method" section."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("### Add a method"):]
    section = section[:section.index("\n## ")]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    line = re.search(r"`(\(\"rescale\".*?\),)`", section).group(1)
    return code, line


@pytest.fixture(scope="module")
def rescale_module():
    code, line = readme_method()
    module = types.ModuleType("core.guidance_rescale")
    sys.modules[module.__name__] = module
    exec(compile(code, "README.md (Add a method)", "exec"), module.__dict__)
    ((kind, request_path, runner_path),) = ast.literal_eval(line)  # the line ends with a comma: a 1-tuple
    register_method(kind, resolve(request_path), resolve(runner_path))
    yield module
    RUNNERS.pop(kind, None)
    REQUEST_KINDS.pop(kind, None)
    sys.modules.pop(module.__name__, None)


def test_every_listed_method_is_registered() -> None:
    for kind, request_path, runner_path in METHODS:
        assert REQUEST_KINDS[kind] is resolve(request_path) and RUNNERS[kind] is resolve(runner_path)


def test_the_readme_method_runs_and_equals_plain_guidance_when_neutral(rescale_module, tiny_engine: Engine) -> None:
    settings = dict(prompt="a red house", width=64, height=64, steps=4, seed=3, guidance_scale=7.5)
    plain = tiny_engine.run(GenerationRequest(**settings))
    neutral = tiny_engine.run(rescale_module.RescaleRequest(**settings, rescale=0.0))
    assert torch.equal(neutral.latents, plain.latents)  # phi = 0 is classifier-free guidance, bit for bit
    rescaled = tiny_engine.run(rescale_module.RescaleRequest(**settings, rescale=1.0))
    assert not torch.allclose(rescaled.latents, plain.latents)
    assert set(rescaled.timings) >= {"encode", "denoise", "decode"}


def test_the_readme_method_checks_its_settings(rescale_module) -> None:
    with pytest.raises(StudioError, match="Rescale must be between 0 and 1"):
        rescale_module.RescaleRequest(prompt="p", rescale=2.0)
    with pytest.raises(StudioError, match="guidance scale above 1"):
        rescale_module.RescaleRequest(prompt="p", guidance_scale=1.0)
    with pytest.raises(StudioError, match="Steps must be between"):  # the shared settings are checked too
        rescale_module.RescaleRequest(prompt="p", steps=0)


def test_the_readme_method_replays_bit_exactly(rescale_module, tiny_engine: Engine, tmp_path: Path) -> None:
    request = rescale_module.RescaleRequest(prompt="a blue boat", width=64, height=64, steps=3, seed=5)
    result = tiny_engine.run(request)
    (path,) = save_result(result, tiny_engine.bundle, tmp_path / "rescale.png")
    image, again, _ = replay(path)
    assert again.request == request
    assert torch.equal(again.latents, result.latents)
