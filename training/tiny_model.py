"""A tiny, randomly initialised Stable Diffusion in diffusers format, built locally.

Same classes and folder layout as SD 1.x (UNet2DConditionModel with cross-attention,
AutoencoderKL with 8x downsampling and 4 latent channels, CLIP text encoder and a CLIP
BPE tokenizer trained here): tests and benchmarks load it through the real loading code.
"""
from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from .tokenizer_build import build_clip_tokenizer

TINY_CORPUS = [
    "a red sun over purple mountains at sunset", "an oil painting of a river with boats",
    "a watercolor of a lake at night with a white moon", "green trees and a small house in a field of flowers",
    "a castle on a hill, dramatic clouds, blue sky, highly detailed, blurry, ugly, low quality",
    "ink sketch of a cat and a dog by the sea", "a flat poster of a city street in the rain",
]


def build_tiny_sd(folder: str | Path, *, seed: int = 0, prediction_type: str = "epsilon",
                  image_size: int = 64, unet_channels: tuple[int, ...] = (32, 64),
                  cross_attention_dim: int = 32) -> Path:
    """Build a tiny SD pipeline and ``save_pretrained`` it (safetensors) into ``folder``."""
    unet = dict(sample_size=image_size // 8, layers_per_block=1, block_out_channels=unet_channels,
                norm_num_groups=min(32, unet_channels[0]),
                down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (len(unet_channels) - 1),
                up_block_types=("CrossAttnUpBlock2D",) * (len(unet_channels) - 1) + ("UpBlock2D",),
                cross_attention_dim=cross_attention_dim, attention_head_dim=8)
    vae = dict(sample_size=image_size, norm_num_groups=8, block_out_channels=(8, 16, 16, 16), layers_per_block=1)
    text = dict(hidden_size=cross_attention_dim, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    return build_sd(folder, unet=unet, vae=vae, text=text, seed=seed, prediction_type=prediction_type)


def build_sd(folder: str | Path, *, unet: dict, vae: dict, text: dict, seed: int = 0,
             prediction_type: str = "epsilon", vocab_size: int = 700, text_vocab: int | None = None) -> Path:
    """A randomly initialised SD 1.x-layout pipeline from UNet, VAE and CLIP text configs
    (the keyword arguments of their classes), saved with ``save_pretrained`` into ``folder``.
    ``text_vocab`` sizes the text encoder's embedding (default: the tokenizer's)."""
    folder = Path(folder)
    torch.manual_seed(seed)
    tokenizer = build_clip_tokenizer(TINY_CORPUS, folder / "_tokenizer_tmp", vocab_size=vocab_size)
    vae_model = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * len(vae["block_out_channels"]),
        up_block_types=("UpDecoderBlock2D",) * len(vae["block_out_channels"]), **vae)
    unet_model = UNet2DConditionModel(in_channels=4, out_channels=4, **unet)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=text_vocab or len(tokenizer), max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **text))
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, skip_prk_steps=True, steps_offset=1,
                              set_alpha_to_one=False, prediction_type=prediction_type)
    scheduler.register_to_config(clip_sample=False)  # as SD 1.x's scheduler_config.json (for DDIM built from it)
    pipe = StableDiffusionPipeline(vae=vae_model, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet_model,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    for leftover in sorted((folder / "_tokenizer_tmp").iterdir()):
        leftover.unlink()
    (folder / "_tokenizer_tmp").rmdir()
    return folder
