"""The bundled demo model (pretrained_models/studio-demo): what a random tiny model cannot show.

It is committed, so these tests never skip: a missing or broken model is a failure.
"""
from __future__ import annotations


import numpy as np
import pytest
import torch
from PIL import Image

from core.engine import Engine
from core.loading import DEFAULT_MODEL_NAME, REPO_ROOT, default_model
from core.panorama import MultiDiffusionRequest
from core.region_map import Region
from core.requests import GenerationRequest
from core.stroke_guidance import stroke_request
from training import procedural as P

MODEL_DIR = REPO_ROOT / "pretrained_models" / DEFAULT_MODEL_NAME
SIZE = 256
STEPS = 15


@pytest.fixture(scope="module")
def demo() -> Engine:
    return Engine.load(model=str(MODEL_DIR), device="cpu")


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float64) / 255


def warmth(image: Image.Image, rows: slice = slice(None), cols: slice = slice(None)) -> float:
    """Mean red minus blue of a part of the image."""
    x = pixels(image)[rows, cols]
    return float((x[..., 0] - x[..., 2]).mean())


def brightness(image: Image.Image, rows: slice = slice(None), cols: slice = slice(None)) -> float:
    return float(pixels(image)[rows, cols].mean())


def test_bundled_model_is_small_safetensors_only_and_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    files = [p for p in MODEL_DIR.rglob("*") if p.is_file()]
    assert (MODEL_DIR / "model_index.json").is_file()
    weights = [p for p in files if p.suffix in (".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".pkl")]
    assert {p.parent.name for p in weights} == {"unet", "vae", "text_encoder"}
    assert all(p.suffix == ".safetensors" for p in weights)
    assert sum(p.stat().st_size for p in files) <= 60_000_000
    monkeypatch.delenv("STUDIO_MODELS_DIR", raising=False)
    assert default_model() == DEFAULT_MODEL_NAME


def test_loads_with_diffusers_alone() -> None:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(MODEL_DIR, use_safetensors=True, safety_checker=None,
                                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    out = pipe("an oil painting of hills at sunset", num_inference_steps=4, guidance_scale=7.5,
               generator=torch.Generator().manual_seed(0), output_type="np").images
    assert out.shape == (1, SIZE, SIZE, 3) and np.isfinite(out).all() and out.std() > 0.02


SKY = slice(0, SIZE * 2 // 5)  # the top two fifths of a painting


def paintings(demo: Engine, prompt: str) -> list[Image.Image]:
    return [demo.generate(GenerationRequest(prompt=prompt, steps=STEPS, seed=seed)).images[0] for seed in range(3)]


def test_sunset_skies_are_warmer_and_brighter_than_night_skies(demo: Engine) -> None:
    sunset, night = (paintings(demo, f"a watercolor painting of green hills and a lake {when}")
                     for when in ("at sunset", "at night"))
    assert min(warmth(im, SKY) for im in sunset) > max(warmth(im, SKY) for im in night) + 0.02
    assert (np.mean([brightness(im, SKY) for im in sunset])
            > np.mean([brightness(im, SKY) for im in night]) + 0.02)


def test_day_skies_are_lighter_than_night_skies(demo: Engine) -> None:
    """Global brightness follows the caption (the model was trained with offset noise)."""
    day, night = ([brightness(im, SKY) for im in paintings(demo, f"a flat poster of green hills and a lake under a sky {when}")]
                  for when in ("by day", "at night"))
    assert min(day) > max(night) + 0.25, (day, night)


def blurred_distance(image: Image.Image, scribble: Image.Image) -> float:
    """Mean colour distance after a strong blur (the painting function of GradOP+)."""
    size = (SIZE // 16, SIZE // 16)
    a = pixels(image.resize(size, Image.BILINEAR))
    b = pixels(scribble.resize(size, Image.BILINEAR))
    return float(np.abs(a - b).mean())


def test_stroke_guidance_moves_the_painting_toward_the_scribble(demo: Engine) -> None:
    for seed in (26, 35):
        scene = P.sample_scene(seed)
        scribble = Image.fromarray(P.render_scribble(scene, SIZE))
        prompt = P.caption(scene, "oil", np.random.default_rng(seed))
        guided = demo.run(stroke_request(prompt, scribble, steps=20, seed=seed)).images[0]
        text_only = demo.generate(GenerationRequest(prompt=prompt, steps=20, seed=seed, scheduler="ddim")).images[0]
        assert blurred_distance(guided, scribble) < 0.8 * blurred_distance(text_only, scribble), seed


def test_region_fusion_paints_each_half_its_own_time_of_day(demo: Engine) -> None:
    left = np.zeros((SIZE, SIZE), bool)
    left[:, : SIZE // 2] = True
    regions = (Region(mask=left, prompt="an oil painting of a red sun over orange hills at sunset"),
               Region(mask=~left, prompt="an oil painting of a white moon over dark blue hills at night"))
    half = SIZE // 2
    for seed in (0, 1):
        image = demo.run(MultiDiffusionRequest(prompt="an oil painting of hills", regions=regions,
                                               steps=STEPS, seed=seed)).images[0]
        assert warmth(image, cols=slice(0, half - 16)) > warmth(image, cols=slice(half + 16, SIZE)) + 0.05, seed
