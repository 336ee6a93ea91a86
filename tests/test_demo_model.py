"""The bundled demo model (pretrained_models/studio-demo): what a random tiny model cannot show.

It is committed, so these tests never skip: a missing or broken model is a failure.
"""
from __future__ import annotations


import cv2
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
    assert {p.parent.name for p in weights} == {"unet", "vae", "text_encoder", "vae_tiny"}  # vae_tiny: previews
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
    """Global brightness follows the caption (the model was trained with offset noise). Model v4:
    day skies 0.38-0.54, night skies 0.18-0.26 (v2: a gap over 0.25; v4's time-of-day accuracy
    in training.eval is higher, 97% against 95%, but this prompt's day is darker)."""
    day, night = ([brightness(im, SKY) for im in paintings(demo, f"a flat poster of green hills and a lake under a sky {when}")]
                  for when in ("by day", "at night"))
    assert min(day) > max(night) + 0.1, (day, night)


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


# --- the scene a new user draws first: a red sun over a green field under a blue sky ------------------

SUN_SCENE = "a watercolor painting of a red sun over a green field under a blue sky by day"
HORIZON = SIZE * 11 // 20
SUN = (SIZE // 2, SIZE // 4, SIZE // 7)  # centre x, centre y, radius


def sun_scene_masks() -> dict[str, np.ndarray]:
    """Bool masks of the drawn sun (a circle), the field (below the horizon) and the sky."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    sun = (xx - SUN[0]) ** 2 + (yy - SUN[1]) ** 2 <= SUN[2] ** 2
    field = yy >= HORIZON
    return {"sun": sun, "field": field, "sky": ~sun & ~field}


def sun_scene_scribble() -> Image.Image:
    """What a person draws with the palette: blue sky, green field, red sun."""
    colours = {"sky": (30, 136, 229), "field": (67, 160, 71), "sun": (229, 57, 53)}
    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    for name, mask in sun_scene_masks().items():
        image[mask] = colours[name]
    return Image.fromarray(image)


def inner(mask: np.ndarray, margin: int = 6) -> np.ndarray:
    """The mask shrunk by ``margin`` pixels (edges blur into the neighbours)."""
    return cv2.erode(mask.astype(np.uint8), np.ones((2 * margin + 1,) * 2, np.uint8)).astype(bool)


def mean_rgb(image: Image.Image, mask: np.ndarray) -> np.ndarray:
    return pixels(image)[inner(mask)].mean(0)


def is_red(rgb: np.ndarray) -> bool:
    return rgb[0] > rgb[1] + 0.12 and rgb[0] > rgb[2] + 0.12


def is_green(rgb: np.ndarray) -> bool:
    return rgb[1] > rgb[0] + 0.04 and rgb[1] > rgb[2] + 0.04


# Known to fail with today's bundled model (issue #11). Model v1's VAE turned this scribble's red sun
# (0.90, 0.22, 0.21) into (0.75, 0.71, 0.61); from v2 on the VAE keeps it red-orange (0.85, 0.47, 0.18).
# Model v4 paints it pale yellow with GradOP+ (0.94, 0.81, 0.47) and yellow with region prompts
# (0.99, 0.87, 0.38): the UNet follows the colour words of a small object only weakly
# (bench/results/quality.md). The live preview below does paint it red.
# strict: when a model paints them, these pass and the marker must go.
SUN_NOT_RED = pytest.mark.xfail(
    strict=True, reason="the bundled model paints the drawn or prompted sun yellow, not red (bench/results/quality.md)")


@SUN_NOT_RED
def test_gradop_plus_paints_the_drawn_red_sun_red_and_the_field_green(demo: Engine) -> None:
    scribble, masks = sun_scene_scribble(), sun_scene_masks()
    for seed in (0, 1):
        image = demo.run(stroke_request(SUN_SCENE, scribble, steps=20, seed=seed)).images[0]
        sun, field = mean_rgb(image, masks["sun"]), mean_rgb(image, masks["field"])
        assert is_red(sun), (seed, sun)
        assert is_green(field), (seed, field)


def sun_scene_regions(sun_prompt: str | None) -> tuple[Region, ...]:
    masks = sun_scene_masks()
    field = Region(mask=masks["field"], prompt="a watercolor painting of a green field", name="field")
    if sun_prompt is None:
        return (field,)
    return (Region(mask=masks["sun"], prompt=sun_prompt, name="sun"), field)


def region_image(demo: Engine, regions: tuple[Region, ...], seed: int) -> Image.Image:
    request = MultiDiffusionRequest(prompt="a watercolor painting of a blue sky by day", regions=regions,
                                    width=SIZE, height=SIZE, steps=20, seed=seed)
    return demo.run(request).images[0]


@SUN_NOT_RED
def test_region_prompts_paint_a_red_sun_and_a_green_field_where_they_are_drawn(demo: Engine) -> None:
    masks = sun_scene_masks()
    for seed in (0, 1):
        with_sun = region_image(demo, sun_scene_regions("a watercolor painting of a red sun"), seed)
        without = region_image(demo, sun_scene_regions(None), seed)
        sun, field = mean_rgb(with_sun, masks["sun"]), mean_rgb(with_sun, masks["field"])
        assert is_red(sun), (seed, sun)
        assert is_green(field), (seed, field)
        # left to the background prompt, the same circle is not red: the region's prompt made it so
        assert not is_red(mean_rgb(without, masks["sun"])), seed
        assert np.abs(sun - mean_rgb(without, masks["sun"])).max() > 0.15, seed



def test_the_live_preview_paints_the_drawn_red_sun_red_and_the_field_green(demo: Engine) -> None:
    """Live mode's fast path (the app's live settings: GradOP+ fast through the linear map,
    LIVE_STEPS steps) keeps the drawn colours: unlike full GradOP+ above, it paints this sun red."""
    from studio_ui.methods import ScribbleSettings, live_scribble_settings, scribble_request

    scribble, masks = sun_scene_scribble(), sun_scene_masks()
    for seed in (0, 1):
        settings = live_scribble_settings(ScribbleSettings(SUN_SCENE, width=SIZE, height=SIZE, seed=seed))
        image = demo.run(scribble_request(settings, scribble)).images[0]
        sun, field = mean_rgb(image, masks["sun"]), mean_rgb(image, masks["field"])
        assert is_red(sun), (seed, sun)
        assert is_green(field), (seed, field)
