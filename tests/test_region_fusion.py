"""Region fusion (MultiDiffusion) against exact answers.

The analytic denoiser: if prompt p's data is a point mass at a constant latent c_p, the
exact noise prediction is eps = (z - sqrt(abar_t) c_p) / sqrt(1 - abar_t). With a DDIM
schedule that ends at abar = 1, each path then lands exactly on its constant, so the fused
result must equal c_p inside region p and the background's constant elsewhere.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from PIL import Image, ImageDraw

from core.errors import StudioError
from core.panorama import panorama_views
from core.region_fusion import Bootstrap, FusionPath, RegionFusion, View, add_to_view, crop_view, fusion_weight_sum
from core.region_map import (ColorPrompt, Region, background_weight, latent_mask, latent_masks, load_prompt_table,
                             parse_color, parse_prompt_table, regions_from_map)
from core.sampling import alpha_bar, denoise

from analytic import C, analytic_model, constants_table, ddim


def run(paths: list[FusionPath], views: list[View], table: torch.Tensor, scheduler: DDIMScheduler, *,
        seed: int = 0, bootstrap_steps: int = 0, batch: int = 16, padding: int | None = None,
        images: int = 1) -> tuple[torch.Tensor, RegionFusion]:
    h, w = paths[0].weight.shape
    noise = torch.randn(images, C, h, w, generator=torch.Generator().manual_seed(seed))
    boot = None
    if bootstrap_steps:
        colors = torch.randn(5, C, generator=torch.Generator().manual_seed(seed + 1))
        boot = Bootstrap(colors, noise, frozenset(float(t) for t in scheduler.timesteps[:bootstrap_steps]),
                         lambda t: alpha_bar(scheduler, t))
    fusion = RegionFusion(analytic_model(scheduler), table, paths, views, bootstrap=boot, batch_rows=batch,
                          crop_padding=padding)
    return denoise(noise.clone(), scheduler, scheduler.timesteps, fusion), fusion


# --- mask shapes at an arbitrary image size --------------------------------------------------


def shape_mask(kind: str, size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """A painted mask (white inside) of ``size`` (width, height)."""
    w, h = size
    image = Image.new("L", size, 0)
    draw = ImageDraw.Draw(image)
    if kind == "disk":
        draw.ellipse((w * 0.1, h * 0.2, w * 0.5, h * 0.9), fill=255)
    elif kind == "ring":
        draw.ellipse((w * 0.5, h * 0.05, w * 0.95, h * 0.95), fill=255)
        draw.ellipse((w * 0.62, h * 0.3, w * 0.83, h * 0.7), fill=0)
    elif kind == "L":
        draw.rectangle((0, 0, w * 0.15, h), fill=255)
        draw.rectangle((0, h * 0.8, w * 0.6, h), fill=255)
    else:  # random blobs
        coarse = rng.random((4, 8)) > 0.6
        image = Image.fromarray((coarse * 255).astype(np.uint8)).resize(size, Image.BICUBIC)
    return image


def region_paths(masks: list[torch.Tensor], scales: list[float] | None = None,
                 bootstrap: bool = False) -> list[FusionPath]:
    """Background path 0 (W = clamp(1 - sum, 0)) and path i + 1 for mask i; cond index = path index."""
    shape = tuple(masks[0].shape)
    paths = [FusionPath(background_weight(masks, shape), 0)]
    for i, mask in enumerate(masks):
        paths.append(FusionPath(mask, i + 1, bootstrap_mask=mask if bootstrap else None))
    return paths


CANVAS = (160, 96)  # pixels (width, height): latent 20 x 12, not a multiple of the window
VALUES = [[0.5, -0.2, 0.1, 0.9], [-1.0, 0.4, 0.3, -0.5], [0.8, 0.8, -0.7, 0.2], [0.0, -0.9, 1.1, 0.4]]


@pytest.mark.parametrize("bootstrap_steps", [0, 3])
@pytest.mark.parametrize("kinds", [("disk", "ring"), ("L", "blobs"), ("blobs", "disk", "ring")])
def test_regions_end_at_their_constants(kinds: tuple[str, ...], bootstrap_steps: int) -> None:
    rng = np.random.default_rng(len(kinds) + bootstrap_steps)
    mask_size = (CANVAS[0] * 3 // 2, CANVAS[1] * 3 // 2)  # masks of another size are resized to the canvas
    regions = [Region(shape_mask(k, mask_size, rng), f"region {i}") for i, k in enumerate(kinds)]
    kept, masks, warnings = latent_masks(regions, CANVAS, 8)
    assert len(kept) == len(kinds) and not warnings
    # later regions win where painted masks overlap, as on a colour map
    for i in range(len(masks)):
        for later in masks[i + 1 :]:
            masks[i] = masks[i] * (1 - later)
    scheduler = ddim()
    views = panorama_views(12, 20, window=8, stride=3)
    out, _ = run(region_paths(masks, bootstrap=bool(bootstrap_steps)), views, constants_table(VALUES), scheduler,
                 bootstrap_steps=bootstrap_steps)
    label = torch.zeros(12, 20, dtype=torch.long)
    for i, mask in enumerate(masks):
        label[mask > 0.5] = i + 1
    expected = torch.tensor(VALUES)[label].permute(2, 0, 1)[None]
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)


def test_soft_overlapping_masks_average_by_weight() -> None:
    """Weights add where soft masks overlap: the result is sum_i W_i c_i / sum_i W_i per pixel."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 12), torch.linspace(0, 1, 20), indexing="ij")
    a, b = (0.9 * torch.exp(-((xx - 0.35) ** 2) * 8)), (0.8 * torch.exp(-((xx - 0.6) ** 2 + (yy - 0.5) ** 2) * 6))
    paths = region_paths([a, b])
    paths[2] = FusionPath(2.0 * b, 2)  # a region weight of 2
    out, _ = run(paths, panorama_views(12, 20, 8, 2), constants_table(VALUES), ddim())
    weights = torch.stack([p.weight for p in paths])  # (3, h, w)
    expected = torch.einsum("phw,pc->chw", weights, torch.tensor(VALUES[:3])) / weights.sum(0)
    torch.testing.assert_close(out[0], expected, atol=1e-4, rtol=0)


def test_guidance_per_region_ends_at_guided_constant() -> None:
    """CFG (eps_u + s (eps_c - eps_u)) on point masses lands on c_u + s (c_c - c_u)."""
    mask = torch.zeros(12, 20)
    mask[:, :9] = 1
    paths = [FusionPath(1 - mask, 0, uncond=3, guidance_scale=3.0), FusionPath(mask, 1, uncond=2, guidance_scale=1.5)]
    out, _ = run(paths, panorama_views(12, 20, 8, 4), constants_table(VALUES), ddim())
    v = torch.tensor(VALUES)
    expected_bg, expected_fg = v[3] + 3.0 * (v[0] - v[3]), v[2] + 1.5 * (v[1] - v[2])
    torch.testing.assert_close(out[0, :, :, :9], expected_fg[:, None, None].expand(C, 12, 9), atol=1e-4, rtol=0)
    torch.testing.assert_close(out[0, :, :, 9:], expected_bg[:, None, None].expand(C, 12, 11), atol=1e-4, rtol=0)


def test_fast_bbox_crop_is_exact_for_a_pointwise_model_and_cheaper() -> None:
    mask = torch.zeros(12, 20)
    mask[2:6, 3:8] = 1
    paths = region_paths([mask], bootstrap=True)
    table = constants_table(VALUES)
    exact, full = run(paths, [View(0, 0, 12, 20)], table, ddim(), bootstrap_steps=2)
    fast, cropped = run(paths, [View(0, 0, 12, 20)], table, ddim(), bootstrap_steps=2, padding=2)
    torch.testing.assert_close(fast, exact, atol=1e-5, rtol=0)
    assert cropped.plan().pixels() < full.plan().pixels()
    region_rect = cropped.plan().inputs[cropped.plan().rows[-1].input].rect
    assert region_rect == (0, 8, 1, 10)  # rows 2..6 and columns 3..8, padded by 2, clipped to the canvas


def test_batch_size_does_not_change_the_result() -> None:
    masks = [torch.zeros(12, 20), torch.zeros(12, 20)]
    masks[0][:, :6], masks[1][4:, 12:] = 1, 1
    paths = region_paths(masks)
    results = [run(paths, panorama_views(12, 20, 8, 3), constants_table(VALUES), ddim(3), batch=b, images=2)[0]
               for b in (1, 5, 1000)]
    for other in results[1:]:
        torch.testing.assert_close(other, results[0], atol=1e-6, rtol=0)


# --- the paper's fusion of x_{t-1} (eq. 5) equals fusing eps then one DDIM step ---------------


def paper_step(model_fn, scheduler, table, paths, views, x, t, colors=None, noise=None):
    """Reference MultiDiffusion step: Phi per (view, path), fused in x_{t-1} (eq. 5)."""
    value, count = torch.zeros_like(x), torch.zeros_like(x)
    abar = alpha_bar(scheduler, t)
    for view in views:
        x_view = crop_view(x, view)
        for path in paths:
            w = crop_view(path.weight[None, None], view)
            if not bool((w > 0).any()):
                continue
            x_in = x_view
            if colors is not None and path.bootstrap_mask is not None:
                keep = crop_view(path.bootstrap_mask[None, None], view)
                bg = abar.sqrt() * colors[0][None, :, None, None] + (1 - abar).sqrt() * crop_view(noise, view)
                x_in = keep * x_view + (1 - keep) * bg
            eps_u, eps_c = model_fn(torch.cat([x_in, x_in]), t, table[[path.uncond, path.cond]]).chunk(2)
            eps = eps_u + path.guidance_scale * (eps_c - eps_u)
            x_prev = scheduler.step(eps, t, x_in, return_dict=False)[0]  # Phi(F_i(J_t) | y_i)
            add_to_view(value, w * x_prev, view)
            add_to_view(count, w.expand_as(x_prev), view)
    return value / count


@pytest.mark.parametrize("with_bootstrap", [False, True])
def test_fused_eps_then_one_ddim_step_equals_papers_fused_x(tiny_engine, with_bootstrap: bool) -> None:
    """DDIM (eta = 0) is affine in eps with pixel-independent coefficients, so fusing eps and
    stepping once equals stepping every view and fusing x_{t-1} -- with a real (non-local) UNet."""
    scheduler = ddim(10)
    bundle = tiny_engine.bundle
    model_fn = tiny_engine.model_fn(scheduler)
    g = torch.Generator().manual_seed(0)
    table = torch.randn(3, 77, bundle.text_encoder.config.hidden_size, generator=g)
    mask = torch.zeros(8, 20)
    mask[2:7, 5:13] = 1
    paths = [FusionPath(1 - mask, 0, uncond=2, guidance_scale=7.5),
             FusionPath(mask, 1, uncond=2, guidance_scale=4.0, bootstrap_mask=mask)]
    views = panorama_views(8, 20, window=8, stride=4)
    x = torch.randn(1, C, 8, 20, generator=g)
    noise = torch.randn(1, C, 8, 20, generator=g)
    t = scheduler.timesteps[3]
    colors = torch.randn(1, C, generator=g) if with_bootstrap else None
    boot = Bootstrap(colors, noise, frozenset({float(t)}), lambda s: alpha_bar(scheduler, s)) if with_bootstrap else None
    fusion = RegionFusion(model_fn, table, paths, views, bootstrap=boot, batch_rows=7)
    with torch.no_grad():
        ours = scheduler.step(fusion(x, t), t, x, return_dict=False)[0]
        paper = paper_step(model_fn, scheduler, table, paths, views, x, t, colors, noise)
    torch.testing.assert_close(ours, paper, atol=2e-5, rtol=1e-5)


# --- what the plan evaluates -------------------------------------------------------------------


def test_unconditional_pass_is_shared_by_paths_with_the_same_negative() -> None:
    masks = [torch.zeros(8, 8), torch.zeros(8, 8)]
    masks[0][:4], masks[1][4:, :4] = 1, 1
    bg = background_weight(masks, (8, 8))
    paths = [FusionPath(bg, 0, 9, 7.5), FusionPath(masks[0], 1, 9, 7.5, masks[0]), FusionPath(masks[1], 2, 9, 5.0, masks[1])]
    fusion = RegionFusion(lambda z, t, e: z, torch.zeros(10, 1, 8), paths, [View(0, 0, 8, 8)])
    assert len(fusion.plan(False).rows) == 4  # one shared unconditional + 3 conditional
    assert len(fusion.plan(True).rows) == 6  # bootstrapped inputs differ: each region needs its own
    paths[2] = FusionPath(masks[1], 2, 8, 5.0)  # another negative prompt
    fusion = RegionFusion(lambda z, t, e: z, torch.zeros(10, 1, 8), paths, [View(0, 0, 8, 8)])
    assert len(fusion.plan(False).rows) == 5


def test_a_region_runs_only_on_the_views_it_touches() -> None:
    mask = torch.zeros(8, 64)
    mask[2:6, 3:10] = 1
    views = panorama_views(8, 64, window=8, stride=4)
    fusion = RegionFusion(lambda z, t, e: z, torch.zeros(2, 1, 8), region_paths([mask]), views)
    region_views = {fusion.plan().inputs[j.input].view for j in fusion.plan().jobs if j.path == 1}
    assert region_views == {v for v, view in enumerate(views) if view.left < 10 and view.left + 8 > 3} == {0, 1, 2}
    assert len(fusion.plan().rows) == len(views) + 3


def test_bootstrapping_replaces_the_input_outside_the_mask() -> None:
    scheduler = ddim(5)
    mask = torch.zeros(8, 8)
    mask[2:5, 3:7] = 1
    calls: list = []
    noise = torch.randn(1, C, 8, 8, generator=torch.Generator().manual_seed(3))
    colors = torch.randn(4, C, generator=torch.Generator().manual_seed(4))
    t0, t1 = scheduler.timesteps[:2]
    boot = Bootstrap(colors, noise, frozenset({float(t0)}), lambda s: alpha_bar(scheduler, s))
    fusion = RegionFusion(analytic_model(scheduler, calls), constants_table(VALUES), region_paths([mask], bootstrap=True),
                          [View(0, 0, 8, 8)], bootstrap=boot)
    z = torch.randn(1, C, 8, 8)
    fusion(z, t0)
    (inputs, consts), = calls
    region_in = inputs[list(consts[:, 0]).index(VALUES[1][0])][None]
    inside = mask.bool()
    torch.testing.assert_close(region_in[:, :, inside], z[:, :, inside])
    abar = alpha_bar(scheduler, t0)
    outside = (region_in - (1 - abar).sqrt() * noise)[:, :, ~inside] / abar.sqrt()  # the constant colour
    assert any(torch.allclose(outside, c[None, :, None].expand_as(outside), atol=1e-4) for c in colors)
    torch.testing.assert_close(inputs[list(consts[:, 0]).index(VALUES[0][0])][None], z)  # background: untouched
    calls.clear()
    fusion(z, t1)  # past the bootstrapping steps: one shared input
    (inputs, _), = calls
    assert all(torch.equal(row[None], z) for row in inputs)


def test_uncovered_pixels_are_an_error() -> None:
    with pytest.raises(StudioError, match="no prompt weight"):
        RegionFusion(lambda z, t, e: z, torch.zeros(1, 1, 8), [FusionPath(torch.ones(8, 16), 0)], [View(0, 0, 8, 8)])


def test_weight_sum_counts_overlapping_views() -> None:
    views = panorama_views(8, 20, window=8, stride=4, circular=True)
    total = fusion_weight_sum([FusionPath(torch.ones(8, 20), 0)], views)
    assert torch.equal(total, torch.full((8, 20), 2.0, dtype=torch.float64))


# --- region maps and masks -----------------------------------------------------------------------


def painted_map(size=(64, 64)) -> Image.Image:
    image = Image.new("RGB", size, "#ffffff")
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, 31, 31), fill="#ff0000")
    draw.rectangle((32, 32, 63, 63), fill="#0000ff")
    return image


def test_colour_and_prompt_table_parsing(tmp_path) -> None:
    assert parse_color("#FF8800") == parse_color("ff8800") == "#ff8800" and parse_color("#abc") == "#aabbcc"
    with pytest.raises(StudioError, match="not a colour"):
        parse_color("red")
    table = parse_prompt_table({"#ff0000": "a sun", "#0000ff": {"prompt": "a lake", "negative": "boats", "seed": 3},
                                "#ffffff": None})
    assert table["#0000ff"] == ColorPrompt("a lake", "boats", 3) and table["#ffffff"].prompt is None
    for bad, message in [([1, 2], "JSON object"), ({"#ff0000": {"negative": "x"}}, "no \"prompt\""),
                         ({"#ff0000": {"prompt": "x", "colour": 1}}, "Unknown key"), ({"#f00": "a", "#ff0000": "b"}, "twice")]:
        with pytest.raises(StudioError, match=message):
            parse_prompt_table(bad)
    path = tmp_path / "p.json"
    path.write_text("{not json")
    with pytest.raises(StudioError, match="not valid JSON"):
        load_prompt_table(path)


def test_region_map_to_regions() -> None:
    regions, warnings = regions_from_map(painted_map(), {"#ff0000": "a sun", "#0000ff": {"prompt": "a lake", "seed": 4},
                                                         "#ffffff": None})
    assert [r.prompt for r in regions] == ["a sun", "a lake"] and regions[1].seed == 4 and not warnings
    assert np.asarray(regions[0].mask)[:32, :32].all() and not np.asarray(regions[0].mask)[32:].any()


def test_colours_without_prompt_are_listed_in_one_error() -> None:
    image = painted_map()
    ImageDraw.Draw(image).rectangle((0, 40, 7, 47), fill=(0, 255, 0))
    with pytest.raises(StudioError, match=r"no prompt: #0000ff \(25.0%\), #00ff00 \(1.5%\)\. Add them"):
        regions_from_map(image, {"#ff0000": "a sun"})  # white without a prompt is the background, as in the app


def test_prompt_for_an_absent_colour_warns_and_specks_merge() -> None:
    image = painted_map()
    image.putpixel((40, 5), (250, 250, 250))  # one anti-aliased pixel
    regions, warnings = regions_from_map(image, {"#ff0000": "a sun", "#0000ff": "a lake", "#ffffff": None,
                                                 "#00ff00": "grass"})
    assert len(regions) == 2
    assert any("#00ff00" in w and "not in the region map" in w for w in warnings)
    assert any("1 stray pixel(s)" in w for w in warnings)


def test_transparent_pixels_are_background() -> None:
    image = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    ImageDraw.Draw(image).rectangle((0, 0, 31, 63), fill=(255, 0, 0, 255))
    regions, warnings = regions_from_map(image, {"#ff0000": "a sun"})
    assert len(regions) == 1 and not warnings


def test_latent_masks_errors_and_warnings() -> None:
    tiny = np.zeros((64, 64))
    tiny[3, 3] = 1  # speck: no latent pixel
    kept, masks, warnings = latent_masks([Region(tiny, "speck", name="#123456"), Region(np.ones((32, 32)), "all")],
                                         (64, 64), 8)
    assert [r.prompt for r in kept] == ["all"] and "#123456" in warnings[0] and "ignored" in warnings[0]
    with pytest.raises(StudioError, match="over the limit of 1"):
        latent_masks([Region(np.ones((8, 8)), "a"), Region(np.ones((8, 8)), "b")], (64, 64), 8, max_regions=1)
    with pytest.raises(StudioError, match="aspect"):
        latent_masks([Region(np.ones((64, 32)), "a")], (64, 64), 8)


def test_hard_masks_follow_the_paper_and_soft_masks_feather() -> None:
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle((0, 0, 27, 63), fill=255)  # 28 px: 3.5 latent columns
    hard = latent_mask(mask, (64, 64), 8)
    assert set(hard.unique().tolist()) == {0.0, 1.0} and hard[0].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    soft = latent_mask(mask, (64, 64), 8, soft=True)
    assert soft[0, 3] == pytest.approx(0.5)
    feathered = latent_mask(mask, (64, 64), 8, soft=True, feather=1.0)
    assert 0 < feathered[0, 5] < 0.5 and feathered.max() <= 1
