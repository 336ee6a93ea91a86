"""One-pass region prompts (regional cross-attention): the attention math, the eps_fn, the engine path."""
from __future__ import annotations

import json

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from PIL import Image

from core.engine import Engine
from core.errors import StudioError
from core.panorama import MultiDiffusionRequest, fusion_eps_fn, fusion_setup
from core.prompts import PromptEncoder
from core.recipe import make_recipe, request_from_recipe
from core.region_fusion import FusionPath, View
from core.region_map import Region
from core.regional_attention import RegionalAttention, RegionalControl, regional_processors
from core.sampling import classifier_free_guidance
from core.schedulers import make_scheduler


def cross_attention() -> Attention:
    torch.manual_seed(0)
    attn = Attention(query_dim=16, cross_attention_dim=12, heads=2, dim_head=8)
    attn.set_processor(AttnProcessor2_0())
    return attn.eval()


def run_processor(attn: Attention, hidden: torch.Tensor, context: torch.Tensor, weights: torch.Tensor,
                  prompts: int, seq: int) -> torch.Tensor:
    control = RegionalControl(prompts, seq)
    control.set_rows(weights)
    with torch.no_grad(), regional_processors_on(attn, control):
        return attn(hidden, encoder_hidden_states=context)


def regional_processors_on(attn: Attention, control: RegionalControl):
    """The processors on one cross-attention module, standing in for a UNet."""
    assert attn.is_cross_attention
    return regional_processors(torch.nn.ModuleDict({"a": attn}), control)


def test_with_every_prompt_equal_it_is_plain_cross_attention() -> None:
    attn = cross_attention()
    hidden, prompt = torch.randn(2, 16, 16), torch.randn(2, 5, 12)
    with torch.no_grad():
        plain = attn(hidden, encoder_hidden_states=prompt)
    weights = torch.rand(2, 3, 4, 4)
    weights = weights / weights.sum(1, keepdim=True)  # any per-pixel mixture of three copies
    out = run_processor(attn, hidden, torch.cat([prompt] * 3, dim=1), weights, prompts=3, seq=5)
    torch.testing.assert_close(out, plain, atol=1e-5, rtol=1e-5)
    assert isinstance(attn.processor, AttnProcessor2_0)  # removed after the block


def test_a_pixel_inside_a_hard_mask_sees_only_its_own_prompt() -> None:
    attn = cross_attention()
    hidden = torch.randn(1, 16, 16)  # a 4x4 grid
    a, b = torch.randn(1, 5, 12), torch.randn(1, 5, 12)
    left = torch.zeros(1, 2, 4, 4)
    left[:, 0, :, :2], left[:, 1, :, 2:] = 1, 1  # prompt a on the left half, b on the right
    out = run_processor(attn, hidden, torch.cat([a, b], 1), left, 2, 5)
    other = run_processor(attn, hidden, torch.cat([a, torch.randn(1, 5, 12)], 1), left, 2, 5)
    with torch.no_grad():
        only_a = attn(hidden, encoder_hidden_states=a)
    cols = torch.arange(16) % 4
    torch.testing.assert_close(out[0, cols < 2], other[0, cols < 2], atol=0, rtol=0)  # b changed: left the same
    torch.testing.assert_close(out[0, cols < 2], only_a[0, cols < 2], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out[0, cols >= 2], other[0, cols >= 2])


def test_calls_that_are_not_ours_run_the_previous_processor_and_errors_remove_the_processors() -> None:
    attn = cross_attention()
    hidden, prompt = torch.randn(1, 16, 16), torch.randn(1, 5, 12)
    with torch.no_grad():
        plain = attn(hidden, encoder_hidden_states=prompt)
    control = RegionalControl(2, 5)
    control.set_rows(torch.full((1, 2, 4, 4), 0.5))
    with torch.no_grad(), regional_processors_on(attn, control):
        torch.testing.assert_close(attn(hidden, encoder_hidden_states=prompt), plain, atol=0, rtol=0)  # 5 keys
    with pytest.raises(RuntimeError, match="boom"), regional_processors_on(attn, control):
        raise RuntimeError("boom")
    assert isinstance(attn.processor, AttnProcessor2_0)


# --- the eps_fn on the tiny model --------------------------------------------------------------


def setup_for(engine: Engine, request: MultiDiffusionRequest):
    b = engine.bundle
    encoder = PromptEncoder(b.tokenizer, b.text_encoder, b.device)
    scheduler = make_scheduler("ddim", b.scheduler_config, steps=4)
    return fusion_setup(engine, request, encoder, (request.width, request.height)), scheduler


def quarter_mask(size: int) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    mask.paste(255, (0, 0, size // 2, size // 2))
    return mask


def test_regions_that_repeat_the_background_prompt_equal_text_to_image(tiny_engine: Engine) -> None:
    prompt = "a quiet lake"
    request = MultiDiffusionRequest(prompt=prompt, negative_prompt="blurry", width=64, height=64, attention=True,
                                    regions=(Region(mask=quarter_mask(64), prompt=prompt),))
    setup, scheduler = setup_for(tiny_engine, request)
    eps_fn = fusion_eps_fn(tiny_engine, request, scheduler, setup, None)
    assert isinstance(eps_fn, RegionalAttention) and len(setup.paths) == 2
    encoder = PromptEncoder(tiny_engine.bundle.tokenizer, tiny_engine.bundle.text_encoder, tiny_engine.bundle.device)
    plain = classifier_free_guidance(tiny_engine.model_fn(scheduler), encoder(prompt), encoder("blurry"), 7.5)
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t = scheduler.timesteps[1]
    with torch.no_grad():
        torch.testing.assert_close(eps_fn(z, t), plain(z, t), atol=1e-5, rtol=1e-4)
    assert eps_fn.rows_run == 2  # one UNet call, CFG's two rows, for both prompts


def test_one_pass_costs_text_to_image_rows_for_any_number_of_regions(tiny_engine: Engine) -> None:
    masks = []
    for i in range(4):
        m = Image.new("L", (64, 64), 0)
        m.paste(255, (16 * i, 0, 16 * i + 16, 64))
        masks.append(Region(mask=m, prompt=f"a red thing {i}"))
    request = MultiDiffusionRequest(prompt="a field", width=64, height=64, attention=True, regions=tuple(masks))
    setup, scheduler = setup_for(tiny_engine, request)
    seen = []
    eps_fn = fusion_eps_fn(tiny_engine, request, scheduler, setup, None)
    model_fn = eps_fn.model_fn
    eps_fn.model_fn = lambda z, t, emb: (seen.append((z.shape[0], emb.shape[1])), model_fn(z, t, emb))[1]
    with torch.no_grad():
        eps_fn(torch.randn(1, 4, 8, 8), scheduler.timesteps[0])
    seq = setup.embeddings.shape[1]
    assert seen == [(2, len(setup.paths) * seq)]  # one call of 2 rows; keys: every prompt's tokens


def test_views_are_averaged_where_they_overlap() -> None:
    seen = []

    def model_fn(z, t, emb):  # a pointwise "model": eps = z; the processors never run
        seen.append(z.shape)
        return z

    paths = [FusionPath(torch.ones(4, 12), 0)]
    views = [View(0, 0, 4, 8), View(0, 4, 4, 8)]
    eps_fn = RegionalAttention(model_fn, torch.nn.ModuleDict({"a": cross_attention()}), torch.zeros(1, 3, 2), paths,
                               views)
    z = torch.randn(2, 4, 4, 12)
    torch.testing.assert_close(eps_fn(z, torch.tensor(10.0)), z)
    assert seen == [torch.Size([2 * 2, 4, 4, 8])] and eps_fn.rows_run == 2


def test_attention_mode_through_the_engine_replays_and_differs_from_fusion(tiny_engine: Engine) -> None:
    common = dict(prompt="a meadow", negative_prompt="", width=64, height=64, steps=3, seed=4,
                  regions=(Region(mask=quarter_mask(64), prompt="a red barn"),))
    one_pass = MultiDiffusionRequest(**common, attention=True)
    result = tiny_engine.run(one_pass)
    replay = request_from_recipe(json.loads(json.dumps(make_recipe(one_pass, {"name": "tiny"}, 0, [4]))))
    assert replay.attention is True
    assert torch.equal(tiny_engine.run(replay).latents, result.latents)
    assert not torch.equal(tiny_engine.run(MultiDiffusionRequest(**common)).latents, result.latents)
    for _, module in tiny_engine.bundle.unet.named_modules():
        assert "Regional" not in type(getattr(module, "processor", None)).__name__


def test_attention_runs_on_a_shifted_window_panorama(tiny_engine: Engine) -> None:
    mask = Image.new("L", (256, 64), 0)
    mask.paste(255, (90, 0, 170, 64))
    request = MultiDiffusionRequest(prompt="a valley", kind="panorama", width=256, height=64, steps=2, seed=1,
                                    windows="shifted", attention=True, circular=True,
                                    regions=(Region(mask=mask, prompt="a lake"),))
    assert tiny_engine.run(request).images[0].size == (256, 64)


def test_fast_and_attention_refuse_to_combine() -> None:
    with pytest.raises(StudioError, match="Choose one region mode"):
        MultiDiffusionRequest(prompt="p", fast=True, attention=True)
    with pytest.raises(StudioError, match="Attention"):
        MultiDiffusionRequest(prompt="p", attention="yes")
