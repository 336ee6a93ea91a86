"""Panoramas: views that cover any size, exact answers, and equality with diffusers."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from core.engine import Engine
from core.errors import StudioError
from core.panorama import MultiDiffusionRequest, decode_canvas, panorama_views, region_noise, window_starts
from core.recipe import make_recipe, request_from_recipe
from core.region_fusion import FusionPath, RegionFusion, fusion_weight_sum
from core.region_map import Region
from core.requests import GenerationRequest
from core.sampling import denoise
from training.tiny_model import build_tiny_sd

from analytic import C, analytic_model, constants_table, ddim

VALUES = [[0.5, -0.2, 0.1, 0.9]]


def diffusers_views(height: int, width: int, window: int = 64, stride: int = 8) -> list[tuple[int, int, int, int]]:
    """StableDiffusionPanoramaPipeline.get_views, for latent sizes (its code, unbound)."""
    from diffusers import StableDiffusionPanoramaPipeline

    return StableDiffusionPanoramaPipeline.get_views(None, height * 8, width * 8, window, stride)


@pytest.mark.parametrize("circular", [False, True])
def test_views_cover_every_latent_pixel(circular: bool) -> None:
    for height in (8, 13, 70):
        for width in (8, 29, 75, 130):
            for window, stride in ((64, 8), (8, 3), (16, 16), (5, 2)):
                views = panorama_views(height, width, window, stride, circular)
                total = fusion_weight_sum([FusionPath(torch.ones(height, width), 0)], views)
                assert bool((total > 0).all()), (height, width, window, stride, circular)
                assert all(v.height == min(window, height) and v.width == min(window, width) for v in views)


def test_diffusers_views_leave_the_last_columns_uncovered_and_ours_do_not() -> None:
    """600 px wide: latent 75; diffusers' views stop at column 72 and the last 3 stay zero."""
    assert max(w_end for *_, w_end in diffusers_views(64, 75)) == 72
    assert window_starts(75, 64, 8) == [0, 8, 11]
    assert window_starts(72, 64, 8) == [s for _, _, s, _ in diffusers_views(64, 72)]  # same views where it works


def test_circular_views_wrap_around() -> None:
    views = panorama_views(8, 29, window=8, stride=3, circular=True)
    assert [v.left for v in views] == list(range(0, 29, 3))
    wrapping = [v for v in views if v.left + v.width > 29]
    assert wrapping and wrapping[-1].columns(29).tolist() == [27, 28, 0, 1, 2, 3, 4, 5]


def analytic_panorama(height: int, width: int, window: int, stride: int, circular: bool) -> torch.Tensor:
    scheduler = ddim(5)
    views = panorama_views(height, width, window, stride, circular)
    fusion = RegionFusion(analytic_model(scheduler), constants_table(VALUES[:1]), [FusionPath(torch.ones(height, width), 0)],
                          views, batch_rows=64)
    noise = torch.randn(1, C, height, width, generator=torch.Generator().manual_seed(width))
    return denoise(noise, scheduler, scheduler.timesteps, fusion)


@pytest.mark.parametrize("height,width,window,stride", [(8, 75, 64, 8), (16, 83, 64, 8), (12, 37, 8, 3), (64, 72, 64, 8)])
def test_panorama_of_one_prompt_ends_at_its_constant_everywhere(height, width, window, stride) -> None:
    out = analytic_panorama(height, width, window, stride, circular=False)
    expected = torch.tensor(VALUES[0])[None, :, None, None].expand_as(out)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(out[..., -3:], expected[..., -3:], atol=1e-4, rtol=0)  # the last columns too


@pytest.mark.parametrize("height", [8, 72])
def test_circular_panorama_ends_at_its_constant_across_the_seam(height: int) -> None:
    out = analytic_panorama(height, 29, 8, 3, circular=True)
    expected = torch.tensor(VALUES[0])[None, :, None, None].expand_as(out)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)
    seam = torch.cat([out[..., -2:], out[..., :2]], dim=-1)
    torch.testing.assert_close(seam, expected[..., :4], atol=1e-4, rtol=0)


# --- through the engine, on the tiny model -----------------------------------------------------


@pytest.mark.parametrize("num_images", [1, 2])
def test_a_single_full_canvas_view_equals_text_to_image_bit_exactly(tiny_engine: Engine, num_images: int) -> None:
    common = dict(prompt="a red sun over purple mountains", negative_prompt="blurry", steps=3, seed=11,
                  num_images=num_images)
    plain = tiny_engine.generate(GenerationRequest(**common))
    fused = tiny_engine.run(MultiDiffusionRequest(**common, kind="panorama", width=64, height=64))
    assert torch.equal(fused.latents, plain.latents)
    assert [np.asarray(i).tobytes() for i in fused.images] == [np.asarray(i).tobytes() for i in plain.images]


@pytest.fixture(scope="module")
def no_clip_engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    """The tiny model with SD 1.x's DDIM setting clip_sample=false (DDIM is then affine in eps)."""
    folder = build_tiny_sd(tmp_path_factory.mktemp("models") / "tiny-sd-noclip")
    config_file = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "clip_sample": False}))
    return Engine.load(model=str(folder), device="cpu")


def diffusers_panorama(engine: Engine, window: int, stride: int, **kwargs) -> torch.Tensor:
    """Latents of diffusers' StableDiffusionPanoramaPipeline on the engine's components (DDIM)."""
    from diffusers import DDIMScheduler, StableDiffusionPanoramaPipeline

    b = engine.bundle
    pipe = StableDiffusionPanoramaPipeline(vae=b.vae, text_encoder=b.text_encoder, tokenizer=b.tokenizer, unet=b.unet,
                                           scheduler=DDIMScheduler.from_config(b.scheduler_config), safety_checker=None,
                                           feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    get_views = pipe.get_views  # its own views, with the window and stride it does not expose
    pipe.get_views = lambda h, w, window_size=64, stride_=8, circular_padding=False: get_views(
        h, w, window_size=window, stride=stride, circular_padding=circular_padding)
    with torch.no_grad():
        return pipe(output_type="latent", **kwargs).images


def check_equal_to_diffusers(engine: Engine, width: int, height: int, window: int, stride: int, steps: int) -> None:
    ours = engine.run(MultiDiffusionRequest(prompt="a castle on a hill", negative_prompt="blurry", kind="panorama",
                                            width=width, height=height, window=window, stride=stride, steps=steps,
                                            seed=5, scheduler="ddim", guidance_scale=7.5))
    assert not ours.warnings
    theirs = diffusers_panorama(engine, window, stride, prompt="a castle on a hill", negative_prompt="blurry",
                                width=width, height=height, num_inference_steps=steps, guidance_scale=7.5,
                                generator=torch.Generator().manual_seed(5))
    assert (ours.latents - theirs).abs().max() < 1e-4


def test_equals_diffusers_panorama_pipeline_at_the_tiny_models_scale(no_clip_engine: Engine) -> None:
    """Window 8 / stride 2 latent pixels: the tiny model's native 64 px, as 64 / 8 are SD's 512 px.
    (At 136 px, latent 17, diffusers would leave the last column at zero: 128 is a width it handles.)"""
    check_equal_to_diffusers(no_clip_engine, width=128, height=64, window=8, stride=2, steps=3)


@pytest.mark.slow
def test_equals_diffusers_panorama_pipeline_with_its_default_views(no_clip_engine: Engine) -> None:
    """diffusers' own window 64 / stride 8 (512 px high, 576 wide: two views)."""
    check_equal_to_diffusers(no_clip_engine, width=576, height=512, window=64, stride=8, steps=2)


def test_regions_on_a_circular_panorama_and_img2img(tiny_engine: Engine) -> None:
    mask = np.zeros((32, 96), dtype=bool)
    mask[4:20, 10:40] = True
    request = MultiDiffusionRequest(prompt="a lake at night", kind="panorama", width=192, height=64, window=8, stride=4,
                                    circular=True, steps=3, seed=2, regions=(Region(mask, "a white moon", seed=9),))
    result = tiny_engine.run(request)
    assert result.images[0].size == (192, 64) and result.latents.shape == (1, 4, 8, 24) and not result.warnings
    init = result.images[0]
    again = tiny_engine.run(MultiDiffusionRequest(prompt="a lake at night", regions=request.regions, init_image=init,
                                                  strength=0.5, steps=4, window=8, stride=4, kind="panorama"))
    assert again.images[0].size == init.size


def test_region_seed_draws_the_noise_inside_its_region() -> None:
    mask = torch.zeros(8, 8)
    mask[:, :3] = 1
    request = MultiDiffusionRequest(prompt="x", seed=1, regions=(Region(np.ones((8, 8)), "y", seed=42),))
    noise, _ = region_noise(request, list(request.regions), [mask], (4, 8, 8), torch.device("cpu"), torch.float32)
    base = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(1))
    own = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(42))
    assert torch.equal(noise[..., :3], own[..., :3]) and torch.equal(noise[..., 3:], base[..., 3:])


def test_circular_decode_wraps_and_tiled_decode_matches_size(tiny_engine: Engine) -> None:
    vae = tiny_engine.bundle.vae
    latents = torch.randn(1, 4, 8, 24, generator=torch.Generator().manual_seed(0))
    plain = decode_canvas(vae, latents, 8)
    wrapped = decode_canvas(vae, latents, 8, circular=True)
    tiled = decode_canvas(vae, latents, 8, tiled=True)
    assert plain.shape == wrapped.shape == tiled.shape == (1, 3, 64, 192)
    # wrapping changes the edges (they now see the other side) far more than the middle
    middle = (plain[..., 80:112] - wrapped[..., 80:112]).abs().mean()
    edges = (plain[..., :8] - wrapped[..., :8]).abs().mean() + (plain[..., -8:] - wrapped[..., -8:]).abs().mean()
    assert middle < 0.02 and edges > 2 * middle


def test_request_validation_and_recipe_round_trip() -> None:
    mask = Image.new("L", (48, 32), 0)
    mask.paste(255, (0, 0, 20, 32))
    request = MultiDiffusionRequest(prompt="sky", kind="panorama", width=96, height=64, circular=True, window=8,
                                    stride=4, regions=(Region(mask, "a tree", negative_prompt="leaves", seed=3,
                                                              weight=1.5, name="#00ff00"),))
    rebuilt = request_from_recipe(json.loads(json.dumps(make_recipe(request, {"name": "m"}, 0, [0]))))
    assert rebuilt == request and rebuilt.regions[0] == request.regions[0]
    assert np.array_equal(np.asarray(rebuilt.regions[0].mask), np.asarray(mask))
    for bad, message in [(dict(width=100), "multiple of 8"), (dict(window=64, stride=80), "Stride"), (dict(kind="x"), "kind"),
                         (dict(bootstrap=2.0), "Bootstrap"), (dict(regions=(Region(mask, "a"),) * 3, max_regions=2),
                                                              "over the limit")]:
        with pytest.raises(StudioError, match=message):
            MultiDiffusionRequest(prompt="p", **bad)


def test_default_window_is_the_models_native_latent_size(tiny_engine: Engine) -> None:
    """The reference's 64/8 are SD 1.5's native latent size / 8: other models get theirs."""
    from core.panorama import fusion_setup
    from core.prompts import PromptEncoder

    bundle = tiny_engine.bundle
    encoder = PromptEncoder(bundle.tokenizer, bundle.text_encoder, bundle.device)
    request = MultiDiffusionRequest(prompt="a sea", kind="panorama", width=256, height=64)
    views = fusion_setup(tiny_engine, request, encoder, (256, 64)).views
    assert {(v.height, v.width) for v in views} == {(8, 8)}  # tiny model: 64 px native = 8 latent px
    assert [v.left for v in views] == list(range(0, 32 - 8 + 1, 1))  # stride 8 // 8 = 1
