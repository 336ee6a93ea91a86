"""Stroke guidance (GradOP+, GradOP, SDEdit) against an analytic Gaussian-prior denoiser, then on the tiny model.

The analytic model: latents x0 ~ N(mu, s^2 I), so the exact noise prediction is
eps(x_t) = sqrt(1 - abar) (x_t - sqrt(abar) mu) / (abar s^2 + 1 - abar); the "decoder" is a
fixed linear latent -> RGB map upsampled 8x (nearest). No VAE, no UNet.
"""
from __future__ import annotations

import dataclasses
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler
from PIL import Image, ImageDraw

from core.engine import Engine
from core.errors import StudioError
from core.latent_rgb import latents_to_rgb
from core.requests import GenerationRequest
from core.sampling import alpha_bar, denoise
from core.blur import blur_matrix
from core.blur import gaussian_blur
from core.gradop import GradOPConfig, sample_gradop
from core.gradop_plus import GradOPPlusConfig, check_scheduler, guided_steps, sample_gradop_plus
from core.sdedit import SDEditConfig, sample_sdedit
from core.stroke_guidance import StrokeRequest, StrokeResult, fidelity_parameters, stroke_request
from core.stroke_loss import StrokeTarget, blur_at, masked_mse, painting_loss

SD_SCHEDULE = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                   steps_offset=1, clip_sample=False, set_alpha_to_one=False)
MU, SIGMA = 0.0, 1.0  # the analytic prior N(MU, SIGMA^2 I) of the latents
A = torch.tensor([[0.25, 0.0, 0.0, 0.05], [0.0, 0.25, 0.0, 0.05], [0.0, 0.0, 0.25, 0.05]])  # latent -> RGB
B = torch.tensor([0.5, 0.5, 0.5])
RED, BLUE = (230, 40, 40), (40, 60, 220)
SEEDS = 8


def ddim(steps: int = 50) -> DDIMScheduler:
    scheduler = DDIMScheduler(**SD_SCHEDULE)
    scheduler.set_timesteps(steps)
    return scheduler


def gaussian_eps(scheduler: object):
    """Exact eps of the Gaussian prior at the scheduler's timesteps (E[eps | x_t])."""
    def eps_fn(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        abar = alpha_bar(scheduler, t)
        return (1 - abar).sqrt() * (z - abar.sqrt() * MU) / (abar * SIGMA**2 + 1 - abar)
    return eps_fn


def render(latents: torch.Tensor) -> torch.Tensor:
    """The analytic decoder: linear latent -> RGB, nearest-upsampled 8x. (B, 3, 8h, 8w)"""
    return F.interpolate(latents_to_rgb(latents, A, B), scale_factor=8, mode="nearest")


def scribble(width: int = 64, height: int = 64, partial: bool = False) -> Image.Image:
    """Top half red, bottom half blue; ``partial``: the right half transparent."""
    image = Image.new("RGBA", (width, height), RED + (255,))
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, height // 2, width, height], fill=BLUE + (255,))
    if partial:
        draw.rectangle([width // 2, 0, width, height], fill=(0, 0, 0, 0))
        return image
    return image.convert("RGB")


def noise(width: int, height: int, count: int = SEEDS) -> tuple[torch.Tensor, list[torch.Generator]]:
    generators = [torch.Generator().manual_seed(s) for s in range(count)]
    return torch.cat([torch.randn((1, 4, height // 8, width // 8), generator=g) for g in generators]), generators


def setup(width: int = 64, height: int = 64, partial: bool = False):
    strokes = scribble(width, height, partial)
    request = StrokeRequest(prompt="x", strokes=strokes)
    target = StrokeTarget.from_image(strokes, width, height)
    return request, target, painting_loss(render, target, request.size, request.blur)


def gradop_plus(width: int = 64, height: int = 64, partial: bool = False, scheduler_cls=DDIMScheduler, **kw):
    request, target, loss = setup(width, height, partial)
    x, generators = noise(width, height)
    scheduler = scheduler_cls.from_config(DDIMScheduler(**SD_SCHEDULE).config)
    scheduler.set_timesteps(50)
    mask = target.pooled(8).mask if partial else None
    latents, trace = sample_gradop_plus(x, scheduler, gaussian_eps(scheduler), loss, GradOPPlusConfig(**kw),
                                        generators=generators, mask=mask)
    return latents, trace, loss


def text_only(width: int = 64, height: int = 64) -> torch.Tensor:
    x, _ = noise(width, height)
    scheduler = ddim()
    return denoise(x * scheduler.init_noise_sigma, scheduler, scheduler.timesteps, gaussian_eps(scheduler))


# --- the painting function and the loss --------------------------------------------------------------


def padded_blur(x: torch.Tensor, sigma: float, kernel: int, columns: str = "reflect") -> torch.Tensor:
    """The Gaussian blur as two padded depthwise convolutions (rows reflected; columns by ``columns``)."""
    half = kernel // 2
    offsets = torch.arange(kernel, dtype=torch.float64) - half
    g = torch.exp(-offsets**2 / (2 * sigma**2))
    g = (g / g.sum()).float()
    c = x.shape[1]
    out = F.conv2d(F.pad(x, (half, half, 0, 0), mode=columns), g.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(F.pad(out, (0, 0, half, half), mode="reflect"), g.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def test_blur_matrix_equals_reflect_padded_convolution() -> None:
    x = torch.rand(2, 3, 24, 40)
    assert torch.allclose(gaussian_blur(x, 1.5, 7), padded_blur(x, 1.5, 7), atol=1e-6)
    assert torch.allclose(blur_matrix(16, 2.0, 9).sum(dim=1), torch.ones(16, dtype=torch.float64))


def test_a_wrapped_blur_is_a_circular_convolution_along_the_columns() -> None:
    x = torch.rand(2, 3, 24, 40)
    wrapped = gaussian_blur(x, 2.0, 9, wrap_columns=True)
    assert torch.allclose(wrapped, padded_blur(x, 2.0, 9, columns="circular"), atol=1e-6)
    assert torch.allclose(gaussian_blur(x.roll(7, -1), 2.0, 9, True), wrapped.roll(7, -1), atol=1e-6)
    assert not torch.allclose(gaussian_blur(x, 2.0, 9), wrapped, atol=1e-3)  # the edges differ from reflect's
    assert torch.allclose(blur_matrix(6, 3.0, 31, True).sum(dim=1), torch.ones(6, dtype=torch.float64))


def test_a_wrapped_renderer_sees_the_two_edges_of_a_360_canvas_as_neighbours() -> None:
    from core.stroke_loss import wrapped_renderer

    taps = torch.tensor([0.25, 0.5, 0.25]).view(1, 1, 1, 3)
    upsample = lambda z: F.conv2d(F.pad(z, (1, 1, 0, 0)), taps).repeat_interleave(2, -1)  # noqa: E731 zero border
    z = torch.rand(1, 1, 4, 10)
    circular = F.conv2d(F.pad(z, (1, 1, 0, 0), mode="circular"), taps).repeat_interleave(2, -1)
    assert torch.allclose(wrapped_renderer(upsample, 2, 2)(z), circular, atol=1e-6)
    assert not torch.allclose(upsample(z), circular)


def test_blur_scales_with_size() -> None:
    assert blur_at(7.0, 35, 512, 512) == (7.0, 35)  # the reference, at 512 px
    assert blur_at(7.0, 35, 1024, 1024) == (14.0, 71)
    sigma, kernel = blur_at(7.0, 35, 512, 512, pixel=8)  # fast mode: latent pixels
    assert sigma == pytest.approx(0.875) and kernel == 5


def test_masked_mse_is_plain_mse_for_an_opaque_scribble_and_ignores_transparent_pixels() -> None:
    images = torch.rand(2, 3, 16, 16)
    target = StrokeTarget.from_image(Image.new("RGB", (16, 16), RED), 16, 16)
    assert torch.allclose(masked_mse(images, target), ((images - target.rgb) ** 2).mean(dim=(1, 2, 3)))
    half = scribble(16, 16, partial=True)
    target = StrokeTarget.from_image(half, 16, 16)
    changed = images.clone()
    changed[..., 8:] = 0.0  # the transparent right half
    assert torch.equal(masked_mse(images, target), masked_mse(changed, target))


def test_target_is_resized_to_the_output() -> None:
    target = StrokeTarget.from_image(scribble(32, 32), 64, 48)
    assert target.rgb.shape == (1, 3, 48, 64) and torch.all(target.mask == 1)
    assert torch.allclose(target.rgb[0, :, 2, 2] * 255, torch.tensor(RED, dtype=torch.float32), atol=1)
    pooled = StrokeTarget.from_image(scribble(64, 64, partial=True), 64, 64).pooled(8)
    assert pooled.mask.shape == (1, 1, 8, 8)
    assert torch.all(pooled.mask[..., :4] == 1) and torch.all(pooled.mask[..., 4:] == 0)


# --- GradOP+ on the analytic model ----------------------------------------------------------------------


def test_guidance_window_matches_the_reference() -> None:
    assert guided_steps(50, 0.8, 3) == range(10, 13)  # starts at step 10 (the reference's int() gives 9)
    assert guided_steps(50, 0.8, 0) == range(10, 10)
    assert guided_steps(10, 0.1, 5) == range(9, 9)  # never the last step


def test_zero_iterative_steps_equals_text_only_bit_exactly() -> None:
    plain = text_only()
    for kw in (dict(iterative_steps=0), dict(grad_steps=0), dict(start=0.0)):
        latents, trace, _ = gradop_plus(**kw)
        assert torch.equal(latents, plain) and trace.losses == []


def test_distance_to_scribble_falls_as_iterative_steps_grow() -> None:
    _, _, loss = setup()
    distances = [float(loss(gradop_plus(iterative_steps=n)[0]).mean()) for n in range(4)]
    assert all(a > b for a, b in zip(distances, distances[1:])), distances


def test_distance_to_scribble_falls_as_adam_steps_grow() -> None:
    _, _, loss = setup()
    distances = [float(loss(gradop_plus(grad_steps=k)[0]).mean()) for k in (0, 3, 12, 24)]
    assert all(a > b for a, b in zip(distances, distances[1:])), distances


def test_loss_falls_within_each_guided_step() -> None:
    _, trace, _ = gradop_plus()
    assert len(trace.losses) == 3 and all(len(h) == 12 for h in trace.losses)
    for history in trace.losses:
        assert history[-1] < 0.5 * history[0], history


def test_a_size_other_than_512_equivalent_works() -> None:
    latents, trace, loss = gradop_plus(width=80, height=48)
    assert latents.shape == (SEEDS, 4, 6, 10) and len(trace.losses) == 3
    assert float(loss(latents).mean()) < float(loss(text_only(80, 48)).mean())


def test_half_transparent_scribble_constrains_only_its_painted_half() -> None:
    plain = text_only()
    half, _, _ = gradop_plus(partial=True)
    full, _, full_loss = gradop_plus()
    # the transparent half follows the text-only trajectory exactly (the analytic denoiser is per pixel)
    assert torch.equal(half[..., 4:], plain[..., 4:])
    assert not torch.equal(full[..., 4:], plain[..., 4:])
    # the painted half moves towards the scribble as much as with the whole scribble
    _, _, half_loss = setup(partial=True)
    assert float(half_loss(half).mean()) < 0.8 * float(half_loss(plain).mean())


def test_gradop_plus_is_sound_with_euler_and_refuses_multistep_solvers() -> None:
    _, _, loss = setup()
    guided, trace, _ = gradop_plus(scheduler_cls=EulerDiscreteScheduler)
    unguided, _, _ = gradop_plus(scheduler_cls=EulerDiscreteScheduler, iterative_steps=0)
    assert len(trace.losses) == 3
    assert float(loss(guided).mean()) < 0.9 * float(loss(unguided).mean())
    with pytest.raises(StudioError, match="ddim"):
        check_scheduler(DPMSolverMultistepScheduler.from_config(DDIMScheduler(**SD_SCHEDULE).config))


# --- GradOP and SDEdit on the analytic model ------------------------------------------------------------


def gradop(**kw) -> torch.Tensor:
    _, _, loss = setup()
    x, generators = noise(64, 64)
    config = GradOPConfig(**(dict(t0=0.6, gamma=0.02) | kw))
    return sample_gradop(x, ddim, gaussian_eps(ddim()), loss, config, steps=50, generators=generators)


def test_gradop_two_stages_trade_faithfulness_for_the_prior() -> None:
    _, _, loss = setup()
    plain = float(loss(text_only()).mean())
    by_strength = [float(loss(gradop(t0=s)[0]).mean()) for s in (0.2, 0.6, 1.0)]
    by_gamma = [float(loss(gradop(gamma=g)[0]).mean()) for g in (0.0, 0.1, 1.0)]
    assert by_strength[0] < by_strength[1] < by_strength[2] < plain, by_strength
    assert by_gamma[0] < by_gamma[1] < by_gamma[2], by_gamma
    latents, trace = gradop(t0=0.0)  # no stage 2: x* itself
    assert len(trace.losses) == 1 and trace.losses[0][-1] < trace.losses[0][0]


def test_sdedit_from_the_scribble_latents_moves_towards_them() -> None:
    _, _, loss = setup()
    init = torch.tensor([[0.9, -1.4, -1.4, 0.0]]).view(1, 4, 1, 1).repeat(SEEDS, 1, 8, 8)  # ~red latents
    _, generators = noise(64, 64)
    near = sample_sdedit(init, ddim(), gaussian_eps(ddim()), steps=50, strength=0.5, generators=generators)
    _, generators = noise(64, 64)
    far = sample_sdedit(init, ddim(), gaussian_eps(ddim()), steps=50, strength=1.0, generators=generators)
    red = render(init)
    assert float(((render(near) - red) ** 2).mean()) < float(((render(far) - red) ** 2).mean())


# --- the request and the fidelity slider -------------------------------------------------------------------


def test_request_defaults_follow_the_method() -> None:
    strokes = scribble()
    plus = StrokeRequest(prompt="p", strokes=strokes)
    assert (plus.strength, plus.grad_steps, plus.iterative_steps, plus.lr, plus.steps, plus.scheduler,
            plus.guidance_scale, plus.blur_kernel, plus.blur_sigma) == (0.8, 12, 3, 0.1, 50, "ddim", 7.5, 35, 7.0)
    assert StrokeRequest(prompt="p", strokes=strokes, method="gradop").grad_steps == 40
    assert StrokeRequest(prompt="p", strokes=strokes).size == (64, 64)
    assert StrokeRequest(prompt="p", strokes=strokes, width=96).size == (96, 64)


def test_each_method_has_its_own_config_that_names_what_strength_means() -> None:
    strokes = scribble()
    assert StrokeRequest(prompt="p", strokes=strokes).config == GradOPPlusConfig()  # defaults in one place
    assert StrokeRequest(prompt="p", strokes=strokes, method="gradop").config == GradOPConfig()
    assert StrokeRequest(prompt="p", strokes=strokes, method="sdedit").config == SDEditConfig()
    assert StrokeRequest(prompt="p", strokes=strokes, strength=0.7, iterative_steps=4).config == \
        GradOPPlusConfig(start=0.7, iterative_steps=4)
    assert StrokeRequest(prompt="p", strokes=strokes, method="gradop", strength=0.3, gamma=0.01).config == \
        GradOPConfig(t0=0.3, gamma=0.01)
    assert StrokeRequest(prompt="p", strokes=strokes, method="sdedit", strength=0.6).config == SDEditConfig(0.6)
    assert GradOPPlusConfig().window(50) == guided_steps(50, 0.8, 3) == range(10, 13)
    for make, message in ((lambda: GradOPPlusConfig(iterative_steps=-1), "Iterative steps"),
                          (lambda: GradOPPlusConfig(lr=0.0), "Learning rate"),
                          (lambda: GradOPConfig(gamma=-1.0), "Gamma"), (lambda: GradOPConfig(t0=2), "Strength"),
                          (lambda: SDEditConfig(strength=float("nan")), "Strength")):
        with pytest.raises(StudioError, match=message):
            make()
    with pytest.raises(StudioError, match="Gamma"):  # a field the method does not use is still checked
        StrokeRequest(prompt="p", strokes=strokes, gamma=-1.0)


def test_fidelity_maps_onto_each_method() -> None:
    assert fidelity_parameters("gradop+", 0.5)["iterative_steps"] == 3
    assert fidelity_parameters("sdedit", 0.5)["strength"] == 0.8
    assert fidelity_parameters("gradop+", 0.0)["iterative_steps"] == 0
    assert fidelity_parameters("sdedit", 0.0)["strength"] == 1.0
    assert fidelity_parameters("gradop", 1.0)["strength"] == 0.0
    assert fidelity_parameters("gradop", 0.5)["strength"] == StrokeRequest(prompt="p", strokes=scribble(),
                                                                           method="gradop").strength
    request = stroke_request("p", scribble(), method="gradop+", fidelity=1.0, iterative_steps=2)
    assert request.iterative_steps == 2 and request.fidelity == 1.0  # explicit values win


@pytest.mark.parametrize("kwargs, message", [
    (dict(strokes=Image.new("RGB", (100, 64))), "not a multiple of 8: use 96 or 104"),
    (dict(strokes=Image.new("RGBA", (64, 64), (0, 0, 0, 0))), "empty"),
    (dict(width=60), "not a multiple of 8"),
    (dict(method="magic"), "gradop\\+, gradop, sdedit"),
    (dict(strength=1.5), "Strength must be between 0 and 1"),
    (dict(lr=0.0), "Learning rate"),
    (dict(iterative_steps=-1), "Iterative steps"),
    (dict(blur_kernel=34), "odd"),
    (dict(fidelity=2.0), "Fidelity"),
    (dict(words=(("#00ff00", "river"),)), "not painted"),
    (dict(words=(("green", "river"),)), "#rrggbb"),
    (dict(max_regions=0.0), "Region limit must be a whole number"),  # checked without regions too
    (dict(max_regions=0), "Region limit must be between 1 and 1024"),
])
def test_bad_requests_say_how_to_fix_them(kwargs: dict, message: str) -> None:
    params = dict(prompt="p", strokes=scribble()) | kwargs
    with pytest.raises(StudioError, match=message):
        StrokeRequest(**params)


# --- on the tiny model -------------------------------------------------------------------------------------


def test_gradop_plus_without_guidance_equals_txt2img(tiny_engine: Engine) -> None:
    plain = tiny_engine.generate(GenerationRequest(prompt="a red sun", steps=6, seed=3, scheduler="ddim"))
    stroke = tiny_engine.run(StrokeRequest(prompt="a red sun", strokes=scribble(), steps=6, seed=3,
                                           iterative_steps=0))
    assert torch.equal(stroke.latents, plain.latents)


def test_sdedit_equals_img2img_from_the_scribble(tiny_engine: Engine) -> None:
    strokes = scribble()
    plain = tiny_engine.generate(GenerationRequest(prompt="a lake", steps=6, seed=2, scheduler="ddim",
                                                   init_image=strokes, strength=0.6))
    stroke = tiny_engine.run(StrokeRequest(prompt="a lake", strokes=strokes, steps=6, seed=2, method="sdedit",
                                           strength=0.6))
    assert torch.equal(stroke.latents, plain.latents) and isinstance(stroke, StrokeResult)


@pytest.mark.parametrize("method, fast, partial", [("gradop+", False, False), ("gradop+", True, True),
                                                   ("gradop", False, True), ("gradop", True, False),
                                                   ("sdedit", False, True)])
def test_every_method_runs_on_the_tiny_model(tiny_engine: Engine, method: str, fast: bool, partial: bool) -> None:
    request = StrokeRequest(prompt="a castle on a hill", strokes=scribble(64, 48, partial), method=method, fast=fast,
                            steps=6, grad_steps=4, refine_steps=2 if fast else 0, seed=1)
    result = tiny_engine.run(request)
    assert result.images[0].size == (64, 48) and len(result.faithfulness) == 1
    assert np.isfinite(result.faithfulness[0])
    if method != "sdedit":
        assert result.losses and all(np.isfinite(h).all() for h in result.losses)
        assert result.timings["guidance"] >= 0


def test_gradop_plus_refuses_a_multistep_scheduler(tiny_engine: Engine) -> None:
    with pytest.raises(StudioError, match="--scheduler ddim"):
        tiny_engine.run(StrokeRequest(prompt="a lake", strokes=scribble(), steps=4, scheduler="dpmpp_2m"))


# --- composed with region prompts (MultiDiffusion) ---------------------------------------------------

def top_and_bottom(width: int = 64, height: int = 64) -> tuple:
    from core.region_map import Region

    top = np.zeros((height, width), bool)
    top[: height // 2] = True
    return (Region(mask=top, prompt="a red sun", name="#e53935"), Region(mask=~top, prompt="a blue lake", name="#1e88e5"))


def test_region_prompts_with_no_stroke_guidance_equal_multidiffusion_alone(tiny_engine: Engine) -> None:
    from core.panorama import MultiDiffusionRequest

    regions = top_and_bottom()
    alone = tiny_engine.run(MultiDiffusionRequest(prompt="a painting", regions=regions, width=64, height=64, steps=6,
                                                  seed=3, scheduler="ddim"))
    composed = tiny_engine.run(StrokeRequest(prompt="a painting", strokes=scribble(), steps=6, seed=3,
                                             iterative_steps=0, regions=regions))
    assert torch.equal(composed.latents, alone.latents)
    plain = tiny_engine.run(StrokeRequest(prompt="a painting", strokes=scribble(), steps=6, seed=3, iterative_steps=0))
    assert not torch.equal(composed.latents, plain.latents)  # the regions did something


def test_region_prompts_in_one_pass_with_no_stroke_guidance_equal_one_pass_alone(tiny_engine: Engine) -> None:
    from core.panorama import MultiDiffusionRequest

    regions = top_and_bottom()
    alone = tiny_engine.run(MultiDiffusionRequest(prompt="a painting", regions=regions, width=64, height=64, steps=4,
                                                  seed=3, scheduler="ddim", attention=True))
    composed = tiny_engine.run(StrokeRequest(prompt="a painting", strokes=scribble(), steps=4, seed=3,
                                             iterative_steps=0, regions=regions, region_attention=True))
    assert torch.equal(composed.latents, alone.latents)
    guided = tiny_engine.run(StrokeRequest(prompt="a painting", strokes=scribble(), steps=4, seed=3, grad_steps=2,
                                           regions=regions, region_attention=True))
    assert guided.losses and not torch.equal(guided.latents, alone.latents)


def test_sdedit_with_region_prompts_equals_multidiffusion_img2img(tiny_engine: Engine) -> None:
    from core.panorama import MultiDiffusionRequest

    regions, strokes = top_and_bottom(), scribble()
    alone = tiny_engine.run(MultiDiffusionRequest(prompt="a lake", regions=regions, width=64, height=64, steps=6,
                                                  seed=2, scheduler="ddim", init_image=strokes, strength=0.6))
    composed = tiny_engine.run(StrokeRequest(prompt="a lake", strokes=strokes, steps=6, seed=2, method="sdedit",
                                             strength=0.6, regions=regions))
    assert torch.equal(composed.latents, alone.latents) and isinstance(composed, StrokeResult)


@pytest.mark.parametrize("method, fast", [("gradop+", False), ("gradop+", True), ("gradop", False)])
def test_stroke_guidance_composes_with_region_prompts_and_replays(tiny_engine: Engine, tmp_path, method: str,
                                                                   fast: bool) -> None:
    from core.outputs import replay, save_result
    from core.recipe import read_recipe

    request = StrokeRequest(prompt="a painting", strokes=scribble(64, 48, partial=True), method=method, fast=fast,
                            steps=6, grad_steps=3, seed=4, regions=top_and_bottom(64, 48))
    result = tiny_engine.run(request)
    guided = tiny_engine.run(dataclasses.replace(request, regions=()))
    assert result.losses and not torch.equal(result.latents, guided.latents)
    (path,) = save_result(result, tiny_engine.bundle, tmp_path / "composed.png")
    assert [r["prompt"] for r in read_recipe(path)["request"]["regions"]] == ["a red sun", "a blue lake"]
    image, _, _ = replay(path)
    assert np.array_equal(np.asarray(image), np.asarray(result.images[0]))


def test_words_and_region_prompts_do_not_combine() -> None:
    with pytest.raises(StudioError, match="Words and region prompts do not combine"):
        StrokeRequest(prompt="a red sun", strokes=scribble(), words={"#e53935": "sun"}, regions=top_and_bottom())
    with pytest.raises(StudioError, match="Regions must be a list"):
        StrokeRequest(prompt="a red sun", strokes=scribble(), regions=("a sun",))
    with pytest.raises(StudioError, match="over the limit of 1"):
        StrokeRequest(prompt="a red sun", strokes=scribble(), regions=top_and_bottom(), max_regions=1)


# --- on a panorama canvas (MultiDiffusion's windows) --------------------------------------------------


def test_a_scribble_guided_panorama_without_guidance_equals_the_panorama_alone(tiny_engine: Engine) -> None:
    from core.panorama import MultiDiffusionRequest

    alone = tiny_engine.run(MultiDiffusionRequest(prompt="a lake", kind="panorama", width=192, height=64, steps=6,
                                                  seed=3, scheduler="ddim"))
    composed = tiny_engine.run(StrokeRequest(prompt="a lake", strokes=scribble(192, 64), steps=6, seed=3,
                                             iterative_steps=0, panorama=True))
    assert torch.equal(composed.latents, alone.latents)
    in_one_piece = tiny_engine.run(StrokeRequest(prompt="a lake", strokes=scribble(192, 64), steps=6, seed=3,
                                                 iterative_steps=0))
    assert not torch.equal(composed.latents, in_one_piece.latents)  # the windows did something


def test_a_scribble_guided_panorama_on_shifted_windows_equals_the_shifted_panorama_alone(
        tiny_engine: Engine) -> None:
    from core.panorama import MultiDiffusionRequest

    alone = tiny_engine.run(MultiDiffusionRequest(prompt="a lake", kind="panorama", width=192, height=64, steps=6,
                                                  seed=3, scheduler="ddim", windows="shifted"))
    composed = tiny_engine.run(StrokeRequest(prompt="a lake", strokes=scribble(192, 64), steps=6, seed=3,
                                             iterative_steps=0, panorama=True, windows="shifted"))
    assert torch.equal(composed.latents, alone.latents)
    guided = tiny_engine.run(StrokeRequest(prompt="a lake", strokes=scribble(192, 64), steps=6, seed=3, grad_steps=2,
                                           panorama=True, windows="shifted", fast=True))
    assert guided.losses and not torch.equal(guided.latents, alone.latents)
    with pytest.raises(StudioError, match="Shifted windows are for panorama canvases"):
        StrokeRequest(prompt="a lake", strokes=scribble(), windows="shifted")
    with pytest.raises(StudioError, match="Unknown windows"):
        StrokeRequest(prompt="a lake", strokes=scribble(), panorama=True, windows="tiled")


def test_sdedit_on_a_panorama_canvas_equals_panorama_img2img(tiny_engine: Engine) -> None:
    from core.panorama import MultiDiffusionRequest

    strokes = scribble(192, 64)
    alone = tiny_engine.run(MultiDiffusionRequest(prompt="a lake", kind="panorama", width=192, height=64, steps=6,
                                                  seed=2, scheduler="ddim", init_image=strokes, strength=0.6))
    composed = tiny_engine.run(StrokeRequest(prompt="a lake", strokes=strokes, steps=6, seed=2, method="sdedit",
                                             strength=0.6, panorama=True))
    assert torch.equal(composed.latents, alone.latents)


def test_a_scribble_guided_panorama_follows_the_scribble_and_replays(tiny_engine: Engine, tmp_path) -> None:
    from core.outputs import replay, save_result
    from core.recipe import read_recipe

    request = StrokeRequest(prompt="a lake", strokes=scribble(192, 64, partial=True), steps=6, grad_steps=3,
                            seed=4, panorama=True, fast=True)
    result = tiny_engine.run(request)
    unguided = tiny_engine.run(dataclasses.replace(request, iterative_steps=0))
    assert result.images[0].size == (192, 64) and result.losses
    assert result.faithfulness[0] < unguided.faithfulness[0]
    (path,) = save_result(result, tiny_engine.bundle, tmp_path / "panorama.png")
    assert read_recipe(path)["request"]["panorama"] is True
    image, _, _ = replay(path)
    assert np.array_equal(np.asarray(image), np.asarray(result.images[0]))


def test_a_360_scribble_guided_panorama_wraps_around_and_replays(tiny_engine: Engine, tmp_path) -> None:
    from core.outputs import replay, save_result
    from core.panorama import MultiDiffusionRequest
    from core.recipe import read_recipe

    alone = tiny_engine.run(MultiDiffusionRequest(prompt="a lake", kind="panorama", width=192, height=64, steps=6,
                                                  seed=3, scheduler="ddim", circular=True))
    unguided = tiny_engine.run(StrokeRequest(prompt="a lake", strokes=scribble(192, 64), steps=6, seed=3,
                                             iterative_steps=0, panorama=True, circular=True))
    assert torch.equal(unguided.latents, alone.latents)  # MultiDiffusion's 360-degree windows, and its decoding
    assert np.array_equal(np.asarray(unguided.images[0]), np.asarray(alone.images[0]))
    for fast in (False, True):
        request = StrokeRequest(prompt="a lake", strokes=scribble(192, 64), steps=6, seed=3, grad_steps=3,
                                panorama=True, circular=True, fast=fast)
        result = tiny_engine.run(request)
        assert result.losses and result.faithfulness[0] < unguided.faithfulness[0], fast
    (path,) = save_result(result, tiny_engine.bundle, tmp_path / "360.png")
    assert read_recipe(path)["request"]["circular"] is True
    image, _, _ = replay(path)
    assert np.array_equal(np.asarray(image), np.asarray(result.images[0]))
    with pytest.raises(StudioError, match="360° picture is made in MultiDiffusion's windows"):
        StrokeRequest(prompt="a lake", strokes=scribble(192, 64), circular=True)
    with pytest.raises(StudioError, match="Circular must be true or false"):
        StrokeRequest(prompt="a lake", strokes=scribble(192, 64), panorama=True, circular="yes")


def test_a_panorama_blurs_the_scribble_as_a_square_of_its_height_does() -> None:
    wide = StrokeRequest(prompt="a lake", strokes=scribble(192, 64), panorama=True)
    sigma, kernel = blur_at(*wide.blur, 192, 64)
    assert sigma == pytest.approx(blur_at(7.0, 35, 64, 64)[0]) and kernel == blur_at(7.0, 35, 64, 64)[1]
    assert StrokeRequest(prompt="a lake", strokes=scribble(192, 64)).blur == (7.0, 35)  # not a panorama: as before


def test_words_do_not_work_on_a_panorama_canvas() -> None:
    with pytest.raises(StudioError, match="Words do not work on panorama canvases yet"):
        StrokeRequest(prompt="a red sun", strokes=scribble(), words={"#e53935": "sun"}, panorama=True)
    with pytest.raises(StudioError, match="Panorama must be true or false"):
        StrokeRequest(prompt="a red sun", strokes=scribble(), panorama="yes")
