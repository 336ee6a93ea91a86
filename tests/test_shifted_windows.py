"""Shifted-window panoramas (SpotDiffusion): tilings, exact answers, seams, and the engine path."""
from __future__ import annotations

import json

import pytest
import torch

from core.engine import Engine
from core.errors import StudioError
from core.panorama import MultiDiffusionRequest, panorama_views
from core.recipe import make_recipe, request_from_recipe
from core.region_fusion import FusionPath, fusion_weight_sum
from core.region_map import Region
from core.sampling import denoise
from core.shifted_windows import ShiftedWindows, shifted_views, step_offsets, tile_starts

from analytic import C, analytic_model, constants_table, ddim

VALUES = [[0.5, -0.2, 0.1, 0.9], [-0.7, 0.4, 0.3, -0.1]]


@pytest.mark.parametrize("circular", [False, True])
def test_every_tiling_covers_the_canvas_with_about_one_window_per_window_width(circular: bool) -> None:
    for height in (8, 13, 70):
        for width in (8, 29, 64, 75, 130):
            for window in (8, 16, 64):
                for offset in (0, 1, 5, window - 1):
                    views = shifted_views(height, width, window, (offset, offset), circular)
                    cover = fusion_weight_sum([FusionPath(torch.ones(height, width), 0)], views)
                    assert bool((cover > 0).all()), (height, width, window, offset, circular)
                    tops = -(-height // window) + (0 if height <= window else 1)
                    lefts = -(-width // window) + (0 if width <= window else 1)
                    assert len(views) <= tops * lefts
                    assert all(v.height == min(window, height) and v.width == min(window, width) for v in views)
                    assert all(0 <= v.top and v.top + v.height <= height for v in views)
                    if not circular or width <= window:
                        assert all(0 <= v.left and v.left + v.width <= width for v in views)


def test_a_circular_canvas_of_whole_windows_is_tiled_without_overlap_at_any_offset() -> None:
    for offset in range(16):
        views = shifted_views(16, 64, 16, (0, offset), circular=True)
        cover = fusion_weight_sum([FusionPath(torch.ones(16, 64), 0)], views)
        assert len(views) == 4 and bool((cover == 1).all())
    assert tile_starts(64, 16, 5, wrap=True) == [5, 21, 37, 53]
    assert tile_starts(64, 16, 5, wrap=False) == [0, 5, 21, 37, 48]  # moved inside, never wrapped


def test_offsets_are_seeded_per_distinct_timestep_and_cyclic_steps_by_the_stride() -> None:
    timesteps = [900, 900, 600, 300, 300, 0]  # a second-order solver evaluates steps twice
    random = step_offsets(timesteps, 64, "random", seed=3, stride=8)
    assert list(random) == [900.0, 600.0, 300.0, 0.0]
    assert random == step_offsets(timesteps, 64, "random", seed=3, stride=8)
    assert random != step_offsets(timesteps, 64, "random", seed=4, stride=8)
    assert all(0 <= o < 64 for pair in random.values() for o in pair)
    assert list(step_offsets(timesteps, 64, "cyclic", seed=0, stride=24).values()) == [(0, 0), (24, 24), (48, 48),
                                                                                       (8, 8)]
    with pytest.raises(StudioError, match="random, cyclic"):
        step_offsets(timesteps, 64, "spiral", 0, 8)


def shifted(paths, height, width, window, steps=5, circular=False, seed=0, shift="random"):
    scheduler = ddim(steps)
    offsets = step_offsets(scheduler.timesteps, window, shift, seed, max(1, window // 8))
    fusion = ShiftedWindows(analytic_model(scheduler), constants_table(VALUES), paths, window, offsets,
                            circular=circular)
    noise = torch.randn(1, C, height, width, generator=torch.Generator().manual_seed(seed))
    return denoise(noise, scheduler, scheduler.timesteps, fusion), fusion


@pytest.mark.parametrize("height,width,window,circular", [(8, 75, 16, False), (12, 37, 8, True), (20, 64, 16, True)])
def test_a_panorama_of_one_prompt_ends_at_its_constant_everywhere(height, width, window, circular) -> None:
    out, fusion = shifted([FusionPath(torch.ones(height, width), 0)], height, width, window, circular=circular)
    expected = torch.tensor(VALUES[0])[None, :, None, None].expand_as(out)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)
    assert len(fusion._fusions) > 1  # the tiling moved between steps


def test_region_prompts_land_on_their_constants_inside_their_masks_on_shifted_windows() -> None:
    height, width = 8, 48
    mask = torch.zeros(height, width)
    mask[2:6, 10:30] = 1  # crosses several tile borders
    paths = [FusionPath(1 - mask, 0), FusionPath(mask, 1)]
    out, _ = shifted(paths, height, width, 8)
    inside, outside = mask.bool(), ~mask.bool()
    for c in range(C):
        torch.testing.assert_close(out[0, c][inside], torch.full((int(inside.sum()),), VALUES[1][c]), atol=1e-4, rtol=0)
        torch.testing.assert_close(out[0, c][outside], torch.full((int(outside.sum()),), VALUES[0][c]), atol=1e-4,
                                   rtol=0)


def test_each_step_evaluates_its_own_shifted_tiling_once() -> None:
    height, width, window, steps = 8, 40, 8, 6
    scheduler = ddim(steps)
    seen: list[int] = []
    exact = analytic_model(scheduler)

    def model_fn(z, t, emb):
        seen.append(z.shape[0])
        return exact(z, t, emb)

    offsets = step_offsets(scheduler.timesteps, window, "random", 7, 1)
    fusion = ShiftedWindows(model_fn, constants_table(VALUES), [FusionPath(torch.ones(height, width), 0)], window,
                            offsets, batch_rows=64)
    noise = torch.randn(1, C, height, width, generator=torch.Generator().manual_seed(0))
    denoise(noise, scheduler, scheduler.timesteps, fusion)
    per_step = [len(fusion.views(t)) for t in scheduler.timesteps]
    assert seen == per_step and fusion.rows_run == sum(per_step)  # one model call per step, one row per tile
    for t in scheduler.timesteps:
        left = offsets[float(t)][1]
        assert [v.left for v in fusion.views(t)] == tile_starts(width, window, left, wrap=False)
    assert len({offsets[float(t)] for t in scheduler.timesteps}) > 1


# --- through the engine, on the tiny model -----------------------------------------------------


def test_a_shifted_panorama_runs_each_latent_pixel_about_once_per_step(tiny_engine: Engine) -> None:
    common = dict(prompt="a wide valley", negative_prompt="", kind="panorama", width=256, height=64, steps=3,
                  seed=2, guidance_scale=1.0)
    sliding = tiny_engine.run(MultiDiffusionRequest(**common))
    fast = tiny_engine.run(MultiDiffusionRequest(**common, windows="shifted"))
    again = tiny_engine.run(MultiDiffusionRequest(**common, windows="shifted"))
    assert fast.latents.shape == sliding.latents.shape
    assert torch.equal(fast.latents, again.latents)  # seeded offsets: it replays
    assert not torch.equal(fast.latents, sliding.latents)
    native = int(tiny_engine.bundle.unet.config.sample_size)
    canvas_rows = 256 // 8 // native  # the canvas is this many native windows wide
    views_sliding = len(panorama_views(8, 32, native, max(1, native // 8)))
    assert canvas_rows <= len(shifted_views(8, 32, native, (0, 3), False)) <= canvas_rows + 1 < views_sliding


def test_shifted_windows_with_regions_on_a_circular_panorama_and_its_recipe(tiny_engine: Engine) -> None:
    from PIL import Image

    mask = Image.new("L", (256, 64), 0)
    mask.paste(255, (100, 10, 200, 60))
    request = MultiDiffusionRequest(prompt="a meadow", kind="panorama", width=256, height=64, steps=2, seed=5,
                                    circular=True, windows="shifted", shift="cyclic",
                                    regions=(Region(mask=mask, prompt="a red barn"),))
    result = tiny_engine.run(request)
    assert result.images[0].size == (256, 64)
    replay = request_from_recipe(json.loads(json.dumps(make_recipe(request, {"name": "tiny"}, 0, [5]))))
    assert replay.windows == "shifted" and replay.shift == "cyclic"
    assert torch.equal(tiny_engine.run(replay).latents, result.latents)


def test_unknown_window_modes_get_one_line() -> None:
    with pytest.raises(StudioError, match="'sliding'.*'shifted'"):
        MultiDiffusionRequest(prompt="p", windows="tiled")
    with pytest.raises(StudioError, match="'random' or 'cyclic'"):
        MultiDiffusionRequest(prompt="p", shift="zigzag")
