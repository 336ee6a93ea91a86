"""Paint-with-words cross-attention control on tiny UNets (SD 1.x and 2.x layouts, SDPA processors)."""
from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDIMScheduler, UNet2DConditionModel
from PIL import Image, ImageDraw

from core.attention_control import (PaintWithWordsProcessor, SemanticControl, WordRegion, cross_attention_modules,
                                    missing_words, semantic_attention, word_regions)
from core.engine import Engine
from core.errors import StudioError
from core.prompts import PromptEncoder
from core.sampling import alpha_bar, classifier_free_guidance
from core.stroke_guidance import StrokeRequest

PROMPT = "a castle on a hill, blue sky and a river"
CASTLE, RIVER = (160, 160, 160), (40, 80, 200)
WORDS = (("#a0a0a0", "castle"), ("#2850c8", "river"))


def scribble(size: int = 64) -> Image.Image:
    """Castle grey on the left half, river blue on the right half."""
    image = Image.new("RGB", (size, size), CASTLE)
    ImageDraw.Draw(image).rectangle([size // 2, 0, size, size], fill=RIVER)
    return image


def control_for(engine: Engine, weight: float, record: bool = False) -> SemanticControl:
    bundle = engine.bundle
    regions = word_regions(bundle.tokenizer, PROMPT, scribble(), WORDS, (8, 8))
    cond = PromptEncoder(bundle.tokenizer, bundle.text_encoder, bundle.device)(PROMPT)
    return SemanticControl(regions, weight, (8, 8), cond=cond, record=record)


def cfg_eps(engine: Engine, scheduler: DDIMScheduler):
    bundle = engine.bundle
    encoder = PromptEncoder(bundle.tokenizer, bundle.text_encoder, bundle.device)
    return classifier_free_guidance(engine.model_fn(scheduler), encoder(PROMPT), encoder(""), 7.5)


def ddim_for(engine: Engine) -> DDIMScheduler:
    scheduler = DDIMScheduler.from_config(engine.bundle.scheduler_config)
    scheduler.set_timesteps(10)
    return scheduler


def test_attention_mass_inside_the_region_grows_with_w(tiny_engine: Engine) -> None:
    scheduler = ddim_for(tiny_engine)
    eps_fn = cfg_eps(tiny_engine, scheduler)
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    masses = []
    for weight in (0.0, 0.5, 1.0, 2.0):
        control = control_for(tiny_engine, weight, record=True)
        with torch.no_grad(), semantic_attention(tiny_engine.bundle.unet, control, scheduler):
            eps_fn(z, scheduler.timesteps[0])
        assert control.records and all(r["sigma"] > 1 for r in control.records)
        masses.append([sum(r["mass"][i] for r in control.records) / len(control.records) for i in range(2)])
    for region in range(2):
        series = [m[region] for m in masses]
        assert all(a < b for a, b in zip(series, series[1:])), series
    assert masses[-1][0] > 2 * masses[0][0]


def test_w_zero_equals_no_control_bit_exactly(tiny_engine: Engine) -> None:
    scheduler = ddim_for(tiny_engine)
    eps_fn = cfg_eps(tiny_engine, scheduler)
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain = eps_fn(z, scheduler.timesteps[2])
        with semantic_attention(tiny_engine.bundle.unet, control_for(tiny_engine, 0.0), scheduler):
            controlled = eps_fn(z, scheduler.timesteps[2])
        with semantic_attention(tiny_engine.bundle.unet, control_for(tiny_engine, 1.0), scheduler):
            biased = eps_fn(z, scheduler.timesteps[2])
    assert torch.equal(plain, controlled)
    assert not torch.allclose(plain, biased)


def test_w_zero_request_equals_request_without_words(tiny_engine: Engine) -> None:
    base = dict(prompt=PROMPT, strokes=scribble(), steps=5, seed=4, grad_steps=2)
    plain = tiny_engine.run(StrokeRequest(**base))
    zero = tiny_engine.run(StrokeRequest(**base, words=WORDS, word_weight=0.0))
    some = tiny_engine.run(StrokeRequest(**base, words=WORDS, word_weight=1.0))
    assert torch.equal(plain.latents, zero.latents)
    assert not torch.equal(plain.latents, some.latents)


def test_processors_are_installed_for_the_block_and_restored_after_errors(tiny_engine: Engine) -> None:
    unet = tiny_engine.bundle.unet
    before = {name: proc for name, proc in unet.attn_processors.items()}
    hooks = dict(unet._forward_pre_hooks)
    control = control_for(tiny_engine, 1.0)
    with pytest.raises(RuntimeError, match="boom"):
        with semantic_attention(unet, control, ddim_for(tiny_engine)):
            installed = [m.processor for _, m in cross_attention_modules(unet)]
            assert installed and all(isinstance(p, PaintWithWordsProcessor) for p in installed)
            raise RuntimeError("boom")
    assert unet.attn_processors == before and dict(unet._forward_pre_hooks) == hooks
    with pytest.raises(StudioError, match="'dragon'"):
        tiny_engine.run(StrokeRequest(prompt=PROMPT, strokes=scribble(), steps=3, words=(("#a0a0a0", "dragon"),)))
    assert unet.attn_processors == before


def test_words_missing_from_the_prompt_are_named(tiny_engine: Engine) -> None:
    tokenizer = tiny_engine.bundle.tokenizer
    assert missing_words(tokenizer, PROMPT, ["castle", "blue sky", "dragon", "sky blue"]) == ["dragon", "sky blue"]
    words = (("#a0a0a0", "castle"), ("#a0a0a0", "dragon"), ("#2850c8", "moat"))
    with pytest.raises(StudioError, match="'dragon', 'moat'"):
        word_regions(tokenizer, PROMPT, scribble(), words, (8, 8))


def test_sigma_comes_from_each_unet_call(tiny_engine: Engine) -> None:
    scheduler = ddim_for(tiny_engine)
    eps_fn = cfg_eps(tiny_engine, scheduler)
    control = control_for(tiny_engine, 1.0)
    z = torch.zeros(1, 4, 8, 8)
    strengths = []
    with torch.no_grad(), semantic_attention(tiny_engine.bundle.unet, control, scheduler):
        for t in (scheduler.timesteps[0], scheduler.timesteps[-1]):
            eps_fn(z, t)
            abar = float(alpha_bar(scheduler, t))
            assert control.sigma == pytest.approx(math.sqrt((1 - abar) / abar), rel=1e-5)
            strengths.append(control.strength)
    assert strengths[0] > strengths[1]  # stronger at high noise


def test_bias_applies_to_conditional_rows_and_every_level() -> None:
    cond, uncond = torch.randn(1, 77, 32), torch.randn(1, 77, 32)
    control = SemanticControl([], 1.0, (6, 10), cond=cond)
    assert control.cond_rows(torch.cat([uncond, cond, uncond, cond])).tolist() == [False, True, False, True]
    assert [control.grid(q) for q in (60, 15, 6, 2)] == [(6, 10), (3, 5), (2, 3), (1, 2)]


@pytest.mark.parametrize("sd2", [False, True])
def test_biased_path_reproduces_the_sdpa_processor(sd2: bool) -> None:
    """With zero bias the explicit path (taken when recording) equals diffusers' AttnProcessor2_0."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        norm_num_groups=32, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
        attention_head_dim=(4, 8) if sd2 else 8, use_linear_projection=sd2, upcast_attention=sd2,
    ).eval()
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    context, z, t = torch.randn(2, 77, 32), torch.randn(2, 4, 8, 8), torch.tensor(500)
    mask = torch.zeros(8, 8)
    mask[:, :4] = 1
    control = SemanticControl([WordRegion("#000000", mask, [2, 3])], 0.0, (8, 8), record=True)
    with torch.no_grad():
        plain = unet(z, t, encoder_hidden_states=context).sample
        with semantic_attention(unet, control, scheduler):
            explicit = unet(z, t, encoder_hidden_states=context).sample
    assert control.records
    assert torch.allclose(plain, explicit, atol=1e-5)
