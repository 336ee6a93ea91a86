"""Train an IP-Adapter for a model, with a CLIP image tower as its image encoder.

    python -m training.ip_adapter                                   # the demo model + studio-clip
    python -m training.ip_adapter --model MODEL --clip CLIP --out OUT --steps 3000 --resume

The adapter is IP-Adapter's basic one (Ye et al. 2023; :mod:`core.ip_adapter`): an image
projection (the CLIP image embedding -> 4 tokens of the UNet's text width) and, for every
cross-attention layer, keys and values of those tokens, initialised from the layer's text keys
and values as the paper does. The diffusion model and the encoder stay frozen; the adapter is
built by diffusers' own loader from a state dict (:func:`initial_state`), so what is trained is
exactly what the studio loads. Objective: the model's denoising loss (min-SNR weighted) on
procedural paintings rendered from dataset seed 606 (never used elsewhere), each conditioned on
its own CLIP image embedding and caption; for 30% of the batch the caption is replaced by a
generic prompt ("", "a painting", "a picture", ...: :data:`GENERIC_PROMPTS`), the image is dropped
for 5% and both for 5% (so the image tokens must carry the picture beside a vague prompt, and the
adapter learns the unconditional case). The rendered set (latents, embeddings, captions) is cached in the
checkpoint folder; checkpoints (safetensors + JSON) go there too and ``--resume`` continues the
last. The output folder holds ``ip-adapter.safetensors`` in the original IP-Adapter key layout,
``image_encoder/`` (the CLIP folder's vision tower) and ``ip_adapter.json`` (how it was made).
"""
from __future__ import annotations

import json
import math
import multiprocessing as mp
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from core.cli import OneLineParser
from core.errors import StudioError
from core.ip_adapter import ENCODER_DIR, TOKENS, WEIGHTS_FILE, cross_attention_layers

from . import procedural as P
from .checkpoint import resume_step, save_checkpoint
from .make_dataset import item_scene
from .train import autocast, autocast_dtype, run_cli, snr_weights

DATA_SEED = 606  # dataset seed of the adapter's training paintings
GENERIC_PROMPTS = ("", "a painting", "a picture", "an artwork", "a landscape", "a scene", "art")  # what a dropped
# caption becomes: a prompt that names no style, time or object, so the image tokens must carry them even
# beside a vague text prompt (with "" alone, the demo model paints "a painting" as a speckled texture the
# adapter never learnt to override)


def initial_state(unet: Any, embed_dim: int, *, seed: int = 0, copy_text: bool = True) -> dict[str, dict]:
    """A new adapter for ``unet`` as a state dict in IP-Adapter's layout: a random image projection
    and, per cross-attention layer, to_k_ip/to_v_ip (copies of the layer's to_k/to_v with
    ``copy_text``, else random). Tests build small random adapters with it."""
    g = torch.Generator().manual_seed(seed)
    width = int(unet.config.cross_attention_dim)
    proj = {"proj.weight": torch.randn(TOKENS * width, embed_dim, generator=g) / math.sqrt(embed_dim),
            "proj.bias": torch.zeros(TOKENS * width), "norm.weight": torch.ones(width), "norm.bias": torch.zeros(width)}
    layers: dict[str, torch.Tensor] = {}
    for i, name in enumerate(cross_attention_layers(unet)):
        attn = unet.get_submodule(name.removesuffix(".processor"))
        for part, source in (("to_k_ip", attn.to_k), ("to_v_ip", attn.to_v)):
            w = source.weight.detach().float().cpu().clone() if copy_text else \
                torch.randn(source.weight.shape, generator=g) / math.sqrt(width)
            layers[f"{1 + 2 * i}.{part}.weight"] = w
    return {"image_proj": proj, "ip_adapter": layers}


def trained_state(unet: Any) -> dict[str, dict]:
    """The adapter installed on ``unet`` (by diffusers' loader) back in IP-Adapter's layout."""
    projection = unet.encoder_hid_proj.image_projection_layers[0]
    proj = {k.replace("image_embeds", "proj"): v.detach().float().cpu().clone()
            for k, v in projection.state_dict().items()}
    layers = {}
    for i, name in enumerate(cross_attention_layers(unet)):
        processor = unet.attn_processors[name]
        layers[f"{1 + 2 * i}.to_k_ip.weight"] = processor.to_k_ip[0].weight.detach().float().cpu().clone()
        layers[f"{1 + 2 * i}.to_v_ip.weight"] = processor.to_v_ip[0].weight.detach().float().cpu().clone()
    return {"image_proj": proj, "ip_adapter": layers}


def adapter_parameters(unet: Any) -> list[torch.nn.Parameter]:
    params = list(unet.encoder_hid_proj.parameters())
    for name in cross_attention_layers(unet):
        params += list(unet.attn_processors[name].parameters())
    return params


def save_adapter(out: Path, state: dict[str, dict], encoder_dir: Path, info: dict | None = None) -> Path:
    """Write an adapter folder: ip-adapter.safetensors, image_encoder/ (the vision tower of the
    CLIP folder ``encoder_dir``) and ip_adapter.json."""
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection
    from transformers.utils import logging as hf_logging

    out.mkdir(parents=True, exist_ok=True)
    flat = {f"{group}.{k}": v.contiguous() for group, d in state.items() for k, v in d.items()}
    save_file(flat, str(out / WEIGHTS_FILE))
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        encoder = CLIPVisionModelWithProjection.from_pretrained(encoder_dir, use_safetensors=True, local_files_only=True)
    finally:
        hf_logging.set_verbosity(verbosity)
    encoder.save_pretrained(out / ENCODER_DIR, safe_serialization=True)
    if (encoder_dir / "preprocessor_config.json").exists():
        CLIPImageProcessor.from_pretrained(encoder_dir).save_pretrained(out / ENCODER_DIR)
    if info is not None:
        (out / "ip_adapter.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return out


def _render(args: tuple[int, int, int]) -> tuple[np.ndarray, str]:
    seed, index, size = args
    scene, style, text = item_scene(seed, index)
    return P.render_painting(scene, size, style), text


def build_set(model: Path, clip: Path, count: int, size: int, workers: int, log=print) -> dict[str, Any]:
    """Render ``count`` paintings; their VAE latents (mean, std), CLIP image embeddings, captions."""
    from diffusers import AutoencoderKL

    from PIL import Image
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    from core.ip_adapter import image_embeds

    started = time.perf_counter()
    jobs = [(DATA_SEED, i, size) for i in range(count)]
    if workers > 1:
        with mp.get_context("spawn").Pool(workers) as pool:
            items = pool.map(_render, jobs, chunksize=32)
    else:
        items = [_render(j) for j in jobs]
    log(f"ip-adapter: {count} paintings rendered in {time.perf_counter() - started:.0f} s")
    vae = AutoencoderKL.from_pretrained(model / "vae", use_safetensors=True).eval()
    encoder = CLIPVisionModelWithProjection.from_pretrained(clip, use_safetensors=True).eval()
    processor = CLIPImageProcessor.from_pretrained(clip)
    means, stds, embeds = [], [], []
    with torch.no_grad():
        for start in range(0, count, 32):
            batch = [im for im, _ in items[start:start + 32]]
            x = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).float() / 127.5 - 1
            dist = vae.encode(x).latent_dist
            means.append(dist.mean.half())
            stds.append(dist.std.half())
            embeds.append(image_embeds(encoder, processor, [Image.fromarray(im) for im in batch]))
    log(f"ip-adapter: latents and embeddings in {time.perf_counter() - started:.0f} s")
    return {"mean": torch.cat(means), "std": torch.cat(stds), "embeds": torch.cat(embeds).float(),
            "texts": [t for _, t in items]}


def train(model: Path, clip: Path, out: Path, *, steps: int, batch_size: int, lr: float, images: int,
          checkpoint_dir: Path, resume: bool, checkpoint_every: int, text_drop: float = 0.3,
          image_drop: float = 0.05, both_drop: float = 0.05, snr_gamma: float = 5.0, workers: int = 2,
          resolution: int = 256, seed: int = 0, mixed_precision: str = "no", log=print) -> dict:
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    started = time.perf_counter()
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    cache = checkpoint_dir / f"set-{DATA_SEED}-{images}-{resolution}.safetensors"
    if cache.exists():
        tensors = load_file(str(cache))
        texts = json.loads((cache.with_suffix(".json")).read_text(encoding="utf-8"))
        data = {**tensors, "texts": texts}
        log(f"ip-adapter: {images} cached paintings from {cache}")
    else:
        data = build_set(model, clip, images, resolution, workers, log)
        save_file({k: v.contiguous() for k, v in data.items() if k != "texts"}, str(cache))
        cache.with_suffix(".json").write_text(json.dumps(data["texts"]), encoding="utf-8")
    unet = UNet2DConditionModel.from_pretrained(model / "unet", use_safetensors=True).requires_grad_(False)
    tokenizer = CLIPTokenizer.from_pretrained(model / "tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(model / "text_encoder", use_safetensors=True).eval()
    text_encoder.requires_grad_(False)
    scaling = json.loads((model / "vae" / "config.json").read_text())["scaling_factor"]
    alphas = DDPMScheduler.from_pretrained(model / "scheduler").alphas_cumprod.float()
    embed_dim = int(data["embeds"].shape[1])
    unet._load_ip_adapter_weights([initial_state(unet, embed_dim, seed=seed)], low_cpu_mem_usage=False)
    params = adapter_parameters(unet)
    for p in params:
        p.requires_grad_(True)
    holder = torch.nn.ModuleList([unet.encoder_hid_proj] + [unet.attn_processors[n]
                                                            for n in cross_attention_layers(unet)])
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    start = resume_step(checkpoint_dir, "ip_adapter", holder, optimizer, resume, log)
    ids = tokenizer(data["texts"], padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    generic = tokenizer(list(GENERIC_PROMPTS), padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids
    empty = generic[0]
    amp = autocast_dtype(torch.device("cpu"), mixed_precision)
    warmup = min(100, steps // 10)
    unet.train()
    t0, running = time.perf_counter(), None
    for step in range(start, steps):
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        idx = torch.randint(0, images, (batch_size,), generator=g)
        z = (data["mean"][idx].float() + data["std"][idx].float() * torch.randn(data["mean"][idx].shape, generator=g))
        z = z * scaling
        t = torch.randint(0, len(alphas), (batch_size,), generator=g)
        noise = torch.randn(z.shape, generator=g) + 0.1 * torch.randn(z.shape[0], z.shape[1], 1, 1, generator=g)
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * z + (1 - a).sqrt() * noise
        r = torch.rand(batch_size, generator=g)
        no_text = (r < text_drop) | (r >= 1 - both_drop)
        no_image = ((r >= text_drop) & (r < text_drop + image_drop)) | (r >= 1 - both_drop)
        vague = generic[torch.randint(0, len(generic), (batch_size,), generator=g)]
        both = r >= 1 - both_drop  # the unconditional case: no text at all
        batch_ids = torch.where(no_text[:, None], torch.where(both[:, None], empty[None], vague), ids[idx])
        embeds = torch.where(no_image[:, None], torch.zeros_like(data["embeds"][idx]), data["embeds"][idx])
        factor = (step + 1) / warmup if step < warmup else 0.5 * (1 + math.cos(math.pi * (step - warmup)
                                                                           / max(1, steps - warmup)))
        for group in optimizer.param_groups:
            group["lr"] = lr * factor
        with torch.no_grad():
            context = text_encoder(batch_ids)[0]
        with autocast(torch.device("cpu"), amp):
            pred = unet(noisy, t, context, added_cond_kwargs={"image_embeds": [embeds[:, None]]}).sample
        per_sample = F.mse_loss(pred.float(), noise, reduction="none").mean(dim=(1, 2, 3))
        loss = (per_sample * snr_weights(alphas, t, snr_gamma)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        value = loss.item()
        running = value if running is None else 0.98 * running + 0.02 * value
        done = step + 1
        if done % 50 == 0 or done == steps:
            rate = (done - start) / (time.perf_counter() - t0)
            log(f"ip-adapter: step {done}/{steps} loss {running:.4f} ({rate:.2f} steps/s)")
        if done % checkpoint_every == 0 and done < steps:
            save_checkpoint(checkpoint_dir, "ip_adapter", done, {"ip_adapter": holder}, {}, optimizer,
                            {"steps": steps})
    state = trained_state(unet)
    info = {"model": str(model), "clip": str(clip), "steps": steps, "batch_size": batch_size, "lr": lr,
            "images": images, "resolution": resolution, "data_seed": DATA_SEED, "text_drop": text_drop,
            "generic_prompts": list(GENERIC_PROMPTS), "image_drop": image_drop,
            "both_drop": both_drop, "parameters": sum(v.numel() for d in state.values() for v in d.values()),
            "seconds": round(time.perf_counter() - started, 1), "steps_run": steps - start}
    save_adapter(out, state, clip, info)
    log(f"ip-adapter: {info['parameters']:,} parameters written to {out} ({info['seconds']:.0f} s)")
    return info


def main(argv: Sequence[str] | None = None) -> None:
    p = OneLineParser(prog="python -m training.ip_adapter", description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=Path("pretrained_models/studio-demo"), help="the SD folder")
    p.add_argument("--clip", type=Path, default=Path("pretrained_models/studio-clip"),
                   help="CLIP folder whose vision tower becomes the image encoder")
    p.add_argument("--out", type=Path, default=Path("pretrained_models/studio-ip-adapter"))
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--images", type=int, default=6000, help="paintings rendered for training")
    p.add_argument("--resolution", type=int, default=256, help="their size (the model's native size)")
    p.add_argument("--text-drop", type=float, default=0.3, help="share of captions replaced by a generic prompt")
    p.add_argument("--workers", type=int, default=2, help="processes rendering the paintings")
    p.add_argument("--checkpoint-dir", type=Path, help="default runs/ip_adapter/<out folder name>")
    p.add_argument("--checkpoint-every", type=int, default=250)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--mixed-precision", choices=("no", "bf16"), default="no",
                   help="bf16 autocast (about 1.4x faster on a CPU with AVX512-BF16)")
    p.add_argument("--threads", type=int)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    for folder, what in ((args.model / "unet", "--model"), (args.clip, "--clip")):
        if not (folder / "config.json").exists():
            raise StudioError(f"{what} {folder.parent if what == '--model' else folder}: no config.json; give a "
                              f"{'diffusers SD folder' if what == '--model' else 'transformers CLIP folder'}")
    checkpoints = args.checkpoint_dir or Path("runs") / "ip_adapter" / args.out.resolve().name
    train(args.model, args.clip, args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
          images=args.images, checkpoint_dir=checkpoints, resume=args.resume,
          checkpoint_every=args.checkpoint_every, text_drop=args.text_drop, workers=args.workers,
          resolution=args.resolution,
          mixed_precision=args.mixed_precision)


def cli(argv: Sequence[str] | None = None) -> int:
    """``python -m training.ip_adapter`` (one-line errors: :func:`training.train.run_cli`)."""
    return run_cli(main, argv)


if __name__ == "__main__":
    raise SystemExit(cli())
