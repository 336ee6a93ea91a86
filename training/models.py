"""Model configurations (dataclasses, presets) and builders for a small SD-format model.

The components are the ones Stable Diffusion uses, only smaller: diffusers'
``AutoencoderKL`` (8x downsampling, 4 latent channels), transformers' ``CLIPTextModel``
with a BPE tokenizer trained on the captions, and ``UNet2DConditionModel`` with
cross-attention; the noise schedule is SD's (scaled-linear betas 0.00085..0.012, 1000
steps, epsilon prediction). So every SD tool (diffusers pipelines, the studio engine)
runs the result unchanged.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from core.errors import StudioError

# SD v1's noise schedule: what every SD scheduler config carries.
SD_SCHEDULE: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
}


@dataclass
class VAEConfig:
    """``AutoencoderKL``: len(block_out_channels) - 1 downsamplings (4 blocks = 8x)."""

    block_out_channels: tuple[int, ...] = (16, 32, 64, 128)
    layers_per_block: int = 1
    latent_channels: int = 4
    norm_num_groups: int = 8
    mid_block_add_attention: bool = True


@dataclass
class TextEncoderConfig:
    """``CLIPTextModel``; the vocabulary size comes from the trained tokenizer."""

    hidden_size: int = 256
    intermediate_size: int = 1024
    num_hidden_layers: int = 3
    num_attention_heads: int = 4
    max_length: int = 77
    vocab_size: int = 1024  # target size when training the tokenizer


@dataclass
class UNetConfig:
    """``UNet2DConditionModel``: cross-attention only where ``attention`` is True."""

    block_out_channels: tuple[int, ...] = (64, 128, 160)
    attention: tuple[bool, ...] = (False, True, True)
    layers_per_block: int = 1
    head_dim: int = 32
    norm_num_groups: int = 32
    transformer_layers: int = 1


@dataclass
class ModelConfig:
    """The whole model: its three networks."""

    vae: VAEConfig = field(default_factory=VAEConfig)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        def tuples(d: dict[str, Any]) -> dict[str, Any]:
            return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}

        return cls(VAEConfig(**tuples(data["vae"])), TextEncoderConfig(**tuples(data["text"])),
                   UNetConfig(**tuples(data["unet"])))


PRESETS: dict[str, ModelConfig] = {
    # For tests: a few hundred thousand parameters, runs at 64 px in well under a second.
    "micro": ModelConfig(
        VAEConfig((8, 8, 16, 16), 1, 4, 4, False),
        TextEncoderConfig(32, 64, 1, 2, 77, 600),
        UNetConfig((16, 32), (False, True), 1, 8, 8, 1),
    ),
    # The bundled demo model: ~57 MB fp32 with a 1k-token vocabulary; on one CPU
    # thread a 20-step CFG sample at 256 px takes ~2.2 s, a UNet step at batch 16 ~2 s.
    "small": ModelConfig(),
    # About half the compute of "small" (faster training, lower quality).
    "tiny": ModelConfig(
        VAEConfig((16, 32, 64, 64), 1, 4, 8, True),
        TextEncoderConfig(192, 768, 2, 4, 77, 1024),
        UNetConfig((48, 96, 160), (False, True, True), 1, 32, 16, 1),
    ),
}


def preset(name: str) -> ModelConfig:
    """A copy of a named preset."""
    if name not in PRESETS:
        raise StudioError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return ModelConfig.from_dict(PRESETS[name].to_dict())


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def apply_overrides(cfg: ModelConfig, unet_channels: str | None = None, unet_attention: str | None = None,
                    unet_layers: int | None = None, text_hidden: int | None = None,
                    text_layers: int | None = None, vae_channels: str | None = None,
                    vae_norm_groups: int | None = None) -> ModelConfig:
    """Change a config from command-line style values (``"64,128,192"``, ``"0,1,1"``)."""
    if unet_channels:
        cfg.unet.block_out_channels = _ints(unet_channels)
        if not unet_attention and len(cfg.unet.attention) != len(cfg.unet.block_out_channels):
            cfg.unet.attention = (False,) + (True,) * (len(cfg.unet.block_out_channels) - 1)
    if unet_attention:
        cfg.unet.attention = tuple(bool(v) for v in _ints(unet_attention))
    if len(cfg.unet.attention) != len(cfg.unet.block_out_channels):
        raise StudioError("one attention flag per UNet block is needed (e.g. --unet-attention 0,1,1 for 3 blocks)")
    if unet_layers:
        cfg.unet.layers_per_block = unet_layers
    if text_hidden:
        cfg.text.hidden_size, cfg.text.intermediate_size = text_hidden, 4 * text_hidden
    if text_layers:
        cfg.text.num_hidden_layers = text_layers
    if vae_channels:
        cfg.vae.block_out_channels = _ints(vae_channels)
    if vae_norm_groups:
        if any(c % vae_norm_groups for c in cfg.vae.block_out_channels):
            raise StudioError(f"--vae-norm-groups {vae_norm_groups} must divide every VAE block's channels "
                              f"({', '.join(map(str, cfg.vae.block_out_channels))})")
        cfg.vae.norm_num_groups = vae_norm_groups
    return cfg


def build_vae(cfg: VAEConfig, resolution: int) -> AutoencoderKL:
    """A fresh ``AutoencoderKL`` (scaling factor set later from the data)."""
    n = len(cfg.block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.norm_num_groups,
        sample_size=resolution,
        mid_block_add_attention=cfg.mid_block_add_attention,
    )


def build_text_encoder(cfg: TextEncoderConfig, tokenizer: CLIPTokenizer) -> CLIPTextModel:
    """A fresh ``CLIPTextModel`` sized for ``tokenizer``'s vocabulary."""
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        projection_dim=cfg.hidden_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        max_position_embeddings=cfg.max_length,
        hidden_act="quick_gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def build_unet(cfg: UNetConfig, sample_size: int, cross_attention_dim: int,
               latent_channels: int = 4) -> UNet2DConditionModel:
    """A fresh ``UNet2DConditionModel``; the mid block always has cross-attention."""
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attention))
    # diffusers' ``attention_head_dim`` is, for historical reasons, the number of heads.
    heads = tuple(max(1, c // cfg.head_dim) for c in cfg.block_out_channels)
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=latent_channels,
        out_channels=latent_channels,
        down_block_types=down,
        up_block_types=up,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=heads,
        norm_num_groups=cfg.norm_num_groups,
        transformer_layers_per_block=cfg.transformer_layers,
    )


def train_scheduler() -> DDPMScheduler:
    """The training noise schedule (SD's)."""
    return DDPMScheduler(**SD_SCHEDULE)


def inference_scheduler() -> DDIMScheduler:
    """The scheduler saved with the model: DDIM with SD's settings."""
    return DDIMScheduler(**SD_SCHEDULE, clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def make_pipeline(vae: AutoencoderKL, text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer,
                  unet: UNet2DConditionModel, scheduler: Any | None = None) -> StableDiffusionPipeline:
    """Assemble a ``StableDiffusionPipeline`` without safety checker or feature extractor."""
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=scheduler if scheduler is not None else inference_scheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def count_params(module: torch.nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in module.parameters())


def fp32_megabytes(*modules: torch.nn.Module) -> float:
    """Size of the modules' weights in fp32, in MB (10^6 bytes)."""
    return sum(count_params(m) for m in modules) * 4 / 1e6
