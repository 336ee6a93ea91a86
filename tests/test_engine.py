"""The engine: shapes, determinism, equality with diffusers, schedulers, img2img, cancel."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, EulerAncestralDiscreteScheduler, StableDiffusionImg2ImgPipeline, StableDiffusionPipeline
from PIL import Image

from core.engine import Engine
from core.errors import CancelledError, StudioError
from core.requests import GenerationRequest
from core.schedulers import SCHEDULER_NAMES
from core.vae_codec import decode_latents, encode_image, tensor_to_pils

PROMPT = "a red sun over purple mountains at sunset"


def request(**kw) -> GenerationRequest:
    return GenerationRequest(**{"prompt": PROMPT, "steps": 4, "seed": 7, **kw})


def diffusers_pipe(folder, scheduler_cls=None):
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    if scheduler_cls is not None:
        pipe.scheduler = scheduler_cls.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_shapes_and_native_size(tiny_engine: Engine) -> None:
    result = tiny_engine.generate(request(num_images=2))
    assert result.latents.shape == (2, 4, 8, 8)
    assert [im.size for im in result.images] == [(64, 64), (64, 64)]
    assert result.seeds == [7, 8]
    wide = tiny_engine.generate(request(width=96, height=48))
    assert wide.latents.shape == (1, 4, 6, 12) and wide.images[0].size == (96, 48)
    assert set(result.timings) == {"encode", "denoise", "decode"}


def test_deterministic_and_seed_sensitive(tiny_engine: Engine) -> None:
    a = tiny_engine.generate(request()).latents
    b = tiny_engine.generate(request()).latents
    c = tiny_engine.generate(request(seed=8)).latents
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_variation_i_is_seed_plus_i(tiny_engine: Engine) -> None:
    batch = tiny_engine.generate(request(num_images=2)).latents
    single = tiny_engine.generate(request(seed=8)).latents
    torch.testing.assert_close(batch[1:], single, atol=1e-4, rtol=0)  # batching reorders float sums


@pytest.mark.parametrize("name, cls", [("default", None), ("ddim", DDIMScheduler)])
@pytest.mark.parametrize("guidance", [7.5, 1.0])
def test_txt2img_equals_diffusers(tiny_model_dir, tiny_engine: Engine, name, cls, guidance) -> None:
    pipe = diffusers_pipe(tiny_model_dir, cls)
    theirs = pipe(PROMPT, negative_prompt="blurry", num_inference_steps=5, guidance_scale=guidance,
                  generator=torch.Generator("cpu").manual_seed(3), output_type="latent").images
    ours = tiny_engine.generate(request(negative_prompt="blurry", steps=5, guidance_scale=guidance, seed=3,
                                        scheduler=name)).latents
    assert (ours - theirs).abs().max().item() <= 1e-4


def test_ancestral_equals_diffusers(tiny_model_dir, tiny_engine: Engine) -> None:
    """Euler a draws noise in every step: our generator must continue exactly as diffusers'."""
    pipe = diffusers_pipe(tiny_model_dir, EulerAncestralDiscreteScheduler)
    theirs = pipe(PROMPT, num_inference_steps=4, generator=torch.Generator("cpu").manual_seed(5),
                  output_type="latent").images
    ours = tiny_engine.generate(request(seed=5, scheduler="euler_a")).latents
    assert (ours - theirs).abs().max().item() <= 1e-4


def test_v_prediction_model_equals_diffusers(tiny_v_model_dir) -> None:
    """SD 2.x-style v-prediction: our eps conversion must match diffusers' v handling."""
    engine = Engine.load(model=str(tiny_v_model_dir), device="cpu")
    assert engine.bundle.prediction_type == "v_prediction"
    pipe = diffusers_pipe(tiny_v_model_dir, DDIMScheduler)
    theirs = pipe(PROMPT, num_inference_steps=4, generator=torch.Generator("cpu").manual_seed(2),
                  output_type="latent").images
    ours = engine.generate(request(seed=2, scheduler="ddim")).latents
    assert (ours - theirs).abs().max().item() <= 1e-4


@pytest.mark.parametrize("name", SCHEDULER_NAMES)
def test_each_scheduler_runs(tiny_engine: Engine, name: str) -> None:
    result = tiny_engine.generate(request(scheduler=name, steps=3))
    assert torch.isfinite(result.latents).all()
    assert result.images[0].size == (64, 64)


def test_scheduler_aliases_and_unknown() -> None:
    assert request(scheduler="Euler a").scheduler == "euler_a"
    assert request(scheduler="DPM++ 2M").scheduler == "dpmpp_2m"
    with pytest.raises(StudioError, match="Unknown scheduler 'heun'.*ddim"):
        request(scheduler="heun")


def test_requests_do_not_change_the_shared_model(tiny_engine: Engine) -> None:
    before = dict(tiny_engine.bundle.pipeline.scheduler.config)
    weights = tiny_engine.bundle.unet.conv_in.weight.clone()
    tiny_engine.generate(request(scheduler="euler_a"))
    assert dict(tiny_engine.bundle.pipeline.scheduler.config) == before
    assert torch.equal(tiny_engine.bundle.unet.conv_in.weight, weights)


def smooth_image(size=(64, 64)) -> Image.Image:
    y, x = np.mgrid[0 : size[1], 0 : size[0]]
    rgb = np.stack([x * 255 / size[0], y * 255 / size[1], np.full_like(x, 128)], -1).astype(np.uint8)
    return Image.fromarray(rgb)


def test_img2img_strength_zero_is_vae_round_trip(tiny_engine: Engine) -> None:
    image = smooth_image()
    bundle = tiny_engine.bundle
    expected = tensor_to_pils(decode_latents(bundle.vae, encode_image(bundle.vae, image, bundle.device, bundle.dtype)))
    result = tiny_engine.generate(request(init_image=image, strength=0.0))
    assert np.array_equal(np.asarray(result.images[0]), np.asarray(expected[0]))


def test_img2img_runs_the_same_schedule_tail_as_diffusers(tiny_model_dir, tiny_engine: Engine) -> None:
    """strength 0.5 of 6 DDIM steps re-runs the last 3 timesteps, exactly diffusers' img2img tail."""
    seen: list[int] = []
    tiny_engine.generate(request(init_image=smooth_image(), strength=0.5, steps=6, scheduler="ddim"),
                         callback=lambda e: seen.append(e.total))
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(tiny_model_dir, safety_checker=None,
                                                          requires_safety_checker=False)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.scheduler.set_timesteps(6)
    _, count = pipe.get_timesteps(6, 0.5, "cpu")
    assert seen[0] == count == 3


def test_img2img_size_defaults_to_image(tiny_engine: Engine) -> None:
    result = tiny_engine.generate(request(init_image=smooth_image((80, 48)), strength=0.5))
    assert result.images[0].size == (80, 48)
    with pytest.raises(StudioError, match="not a multiple of 8"):
        tiny_engine.generate(request(init_image=smooth_image((70, 48)), strength=0.5))


def test_callback_progress_preview_and_cancel(tiny_engine: Engine) -> None:
    events = []

    def watch(event):
        events.append((event.step, event.total))
        if event.step == 1:
            preview = event.preview()
            assert preview.size == (32, 32)  # 4x the 8x8 latent
        return event.step == 2  # cancel after the second step

    with pytest.raises(CancelledError):
        tiny_engine.generate(request(steps=6, scheduler="ddim"), callback=watch)
    assert events == [(1, 6), (2, 6)]


@pytest.mark.parametrize("kw, message", [
    ({"width": 100}, "Width 100 is not a multiple of 8: use 96 or 104"),
    ({"height": 4}, "at least 8"),
    ({"steps": 0}, "Steps must be between 1 and 1000"),
    ({"guidance_scale": -1}, "Guidance scale"),
    ({"strength": 1.5}, "Strength"),
    ({"num_images": 0}, "Number of images"),
    ({"seed": -3}, "Seed"),
])
def test_invalid_requests_say_how_to_fix(kw, message) -> None:
    with pytest.raises(StudioError, match=message):
        request(**kw)


def test_pixel_budget(tiny_engine: Engine) -> None:
    with pytest.raises(StudioError, match="over the limit"):
        request(width=4096, height=4096, max_pixels=1024 * 1024)
    with pytest.raises(StudioError, match="over the limit"):
        tiny_engine.generate(request(init_image=smooth_image((64, 64)), max_pixels=1000))


def test_long_prompt_warns_with_dropped_words(tiny_engine: Engine) -> None:
    long = " ".join(["mountains"] * 80) + " zebra"
    result = tiny_engine.generate(request(prompt=long, steps=1))
    assert any("zebra" in w and "dropped" in w for w in result.warnings)


def test_prompt_encodings_are_kept_across_requests(tiny_engine: Engine) -> None:
    """Live mode re-sends the same prompt with every stroke: the text encoder runs once per
    prompt, a kept encoding is a copy (a request cannot change the next one's), the warning
    of a truncated prompt comes back with it, and new weights encode afresh."""
    from core.prompts import PromptEncoder

    bundle = tiny_engine.bundle
    calls = []
    hook = bundle.text_encoder.register_forward_hook(lambda *args: calls.append(1))
    try:
        text, long = "a cached prompt about a lighthouse", " ".join(["word"] * 80) + " zebra"
        first = PromptEncoder(bundle.tokenizer, bundle.text_encoder, bundle.device)
        a = first(text)
        first(long)
        assert len(calls) == 2
        a.mul_(0)  # one request scribbles on its embeddings
        second = PromptEncoder(bundle.tokenizer, bundle.text_encoder, bundle.device)
        b = second(text)
        second(long)
        assert len(calls) == 2 and b.abs().sum() > 0
        assert len(second.warnings) == 1 and "zebra" in second.warnings[0]
        weight = next(bundle.text_encoder.parameters())
        with torch.no_grad():
            weight.add_(0.0)  # an in-place change of the weights (same values, new version)
        PromptEncoder(bundle.tokenizer, bundle.text_encoder, bundle.device)(text)
        assert len(calls) == 3
    finally:
        hook.remove()
