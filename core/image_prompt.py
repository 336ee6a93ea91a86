"""Image prompts: MGAD's multimodal CLIP guidance (Zeng et al., ACM MM 2022), in latent space.

MGAD steers a classifier-free-guided diffusion model with text *and* image prompts at once,
through one CLIP model that embeds both: at each guided step the predicted clean image is
cut into random crops ("cutouts", as in CLIP-guided diffusion), each embedded by CLIP's image
tower, and the loss is the weighted spherical distance of those embeddings to the prompts'
embeddings:

    x0_hat = (z_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)                   (eps: the CFG prediction)
    L(z_t) = sum_k w_k mean_c d(E_img(cut_c(R(x0_hat))), e_k),   d(a, b) = 2 arcsin(|a - b| / 2)^2
    eps'   = eps + s sqrt(1 - abar_t) g / rms(g),                 g = dL/dz_t   (per image)

``e_k`` are CLIP embeddings of the image prompts (and, with ``text_weight``, of the prompt
itself: MGAD's text prompt), ``w_k`` their weights, ``s`` the scale. The last line is
classifier guidance (Dhariwal & Nichol eq. 14, eps - sqrt(1 - abar) grad log p) with
log p = -L, added to the classifier-free-guided eps as MGAD does.

What is adapted from MGAD's pixel-space model to a latent one:

* ``R`` renders latents to RGB: the fitted linear latent->RGB map (one pixel per latent,
  the default: the fast path), the model's tiny decoder, or the VAE decoder (exact, slow).
* ``g`` is taken with eps held fixed (dx0/dz = 1/sqrt(abar)): no backward pass through the
  UNet, so a guided step costs one CLIP pass over the cutouts, not a second UNet pass.
* ``g`` is smoothed by a Gaussian of ``smooth`` latent pixels (default 3) and normalised per
  image (Disco Diffusion's gradient clamp in spirit), so one scale suits models whose latents
  and CLIP towers differ in size; MGAD's absolute scales (``-t 2000``) belong to its 512 px
  pixel model. Without the smoothing the bundled 64 px CLIP's gradient is mostly pixel-level
  pattern: at a scale that changes the picture it turns it into coloured noise
  (measured while building it: scales 2-10 gave 8-17% style, 42-75% time of day on 12 references);
  smoothed, it moves broad colour and light (bench_image_prompt).
* guidance runs on the fraction ``start..end`` of the schedule (default the first 70%: late
  steps only sharpen detail, which CLIP at low resolution cannot judge);
* a prompt may belong to one region (a mask): its cutouts are taken inside the region's
  bounding box and its gradient is kept inside the mask (MultiDiffusion's regions, each with
  its own image prompt).

Cutouts are drawn from a generator seeded by the request's seed and the step, so a recipe
replays bit-exactly. With ``ImageGuidance.method = "ip-adapter"`` the same image prompts (and
regions' ones) act through an IP-Adapter instead (:mod:`core.ip_adapter`), and no CLIP guidance runs. The stacking order (DESIGN.md): this wrapper is outermost, around CFG
and region fusion.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from .errors import StudioError

RENDERERS = ("linear", "tiny", "vae")
METHODS = ("clip", "ip-adapter")  # how image prompts act: MGAD's CLIP guidance, or IP-Adapter tokens
MAX_IMAGE_PROMPTS = 8


@dataclass(frozen=True)
class ImagePrompt:
    """A reference picture and how strongly the result should look like it (CLIP space)."""

    image: Image.Image = field(compare=False)  # RGB; any size (it is resized for CLIP)
    weight: float = 1.0  # relative to the other prompts' weights; 0 turns it off

    def __post_init__(self) -> None:
        from .requests import check_image, check_range  # (core.requests imports this module)

        check_image("An image prompt", self.image)
        check_range("An image prompt's weight", self.weight, 0, 10)


@dataclass(frozen=True, kw_only=True)
class ImageGuidance:
    """MGAD's settings: the whole picture's image prompts and the guidance's strength.

    Region prompts' images (``Region.image_prompt``) use the same settings."""

    prompts: tuple[ImagePrompt, ...] = ()  # image prompts for the whole picture
    scale: float = 1.0  # s: the normalised gradient's size in eps units (0: off)
    text_weight: float = 0.0  # weight of the text prompt in CLIP space (MGAD's text prompt; 0: the
    # diffusion model alone carries the text)
    clip_model: str = "studio-clip"  # a CLIP folder in transformers format (core.clip_model)
    cutouts: int = 16  # random crops embedded per image and step
    cut_power: float = 1.0  # crop sizes: fraction u^power of the way from 40% to 100% of the shorter side
    start: float = 0.0  # guided part of the schedule, as fractions of the steps
    end: float = 0.7
    renderer: str = "linear"  # latents -> RGB for CLIP: "linear" (fast), "tiny" (tiny decoder), "vae" (exact)
    smooth: float = 3.0  # Gaussian sigma (latent pixels) applied to the gradient: keeps the pull to broad
    # colour and light, not the pixel-level patterns a small CLIP also responds to (0: none)
    method: str = "clip"  # "clip": MGAD's CLIP guidance (this module); "ip-adapter": the references become
    # IP-Adapter image tokens (core.ip_adapter; scale is then the adapter's scale, typically 0.5-1)
    ip_adapter: str = "studio-ip-adapter"  # an IP-Adapter folder (or its .safetensors file) for method ip-adapter

    def __post_init__(self) -> None:
        from .requests import check_int, check_range, check_text, show

        if not isinstance(self.prompts, (list, tuple)) or any(not isinstance(p, ImagePrompt) for p in self.prompts):
            raise StudioError("Image prompts must be a list of core.image_prompt.ImagePrompt (image + weight).")
        object.__setattr__(self, "prompts", tuple(self.prompts))
        if len(self.prompts) > MAX_IMAGE_PROMPTS:
            raise StudioError(f"{len(self.prompts)} image prompts is over the limit of {MAX_IMAGE_PROMPTS}: "
                              "use fewer reference images.")
        check_range("The image guidance scale", self.scale, 0, 50)
        check_range("The text prompt's CLIP weight", self.text_weight, 0, 10)
        check_text("The CLIP model", self.clip_model)
        check_int("Cutouts", self.cutouts, 1, 128)
        check_range("The cutout power", self.cut_power, 0.1, 10)
        check_range("The image guidance start", self.start, 0, 1)
        check_range("The image guidance end", self.end, 0, 1)
        check_range("The image guidance smoothing", self.smooth, 0, 16)
        if self.end <= self.start:
            raise StudioError(f"The image guidance must end after it starts (start {show(self.start)}, "
                              f"end {show(self.end)}).")
        if self.method not in METHODS:
            raise StudioError(f"Unknown image prompt method {show(self.method)}: use one of {', '.join(METHODS)}.")
        if self.method == "ip-adapter":
            check_range("The IP-Adapter scale", self.scale, 0, 5)
        check_text("The IP-Adapter", self.ip_adapter)
        if self.renderer not in RENDERERS:
            raise StudioError(f"Unknown image guidance renderer {show(self.renderer)}: use one of "
                              f"{', '.join(RENDERERS)}.")


def spherical_distance(a: Tensor, b: Tensor) -> Tensor:
    """d(a, b) = 2 arcsin(|a - b| / 2)^2 of unit vectors (half the squared great-circle angle)."""
    return (a - b).norm(dim=-1).div(2).clamp(max=1).arcsin().pow(2).mul(2)


def cutout_boxes(height: int, width: int, count: int, power: float, generator: torch.Generator,
                 box: tuple[int, int, int, int] | None = None) -> list[tuple[int, int, int]]:
    """``count`` square crops (top, left, side) inside ``box`` (top, left, bottom, right; the
    whole image by default): sides from 40% to 100% of the box's shorter side."""
    top0, left0, bottom, right = box or (0, 0, height, width)
    h, w = bottom - top0, right - left0
    short = min(h, w)
    lo = max(1, round(0.4 * short))
    out = []
    for _ in range(count):
        u = float(torch.rand((), generator=generator)) ** power
        side = max(1, min(short, round(lo + u * (short - lo))))
        top = top0 + int(torch.randint(0, h - side + 1, (), generator=generator))
        left = left0 + int(torch.randint(0, w - side + 1, (), generator=generator))
        out.append((top, left, side))
    return out


@dataclass
class Target:
    """Embeddings (K, D) with weights (K,) that one image's (or one region's) cutouts are pulled to."""

    embeddings: Tensor
    weights: Tensor
    box: tuple[int, int, int, int] | None = None  # a region's bounding box in latent pixels; None: the whole
    mask: Tensor | None = None  # a region's (h, w) latent mask: the gradient is kept inside it


def mask_box(mask: Tensor) -> tuple[int, int, int, int] | None:
    rows = torch.nonzero(mask.sum(1) > 0).flatten()
    cols = torch.nonzero(mask.sum(0) > 0).flatten()
    if len(rows) == 0:
        return None
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def image_embeddings(guide: Any, prompts: Sequence[Any]) -> Tensor:
    """CLIP embeddings of reference images (each resized as a whole to the CLIP input)."""
    size = (guide.image_size, guide.image_size)
    pixels = [torch.from_numpy(np.array(p.image.convert("RGB").resize(size, Image.BICUBIC))).permute(2, 0, 1)
              .float() / 255 for p in prompts]
    with torch.no_grad():
        return guide.image_features(torch.stack(pixels))


class ClipGuidance:
    """The eps_fn wrapper of MGAD's guidance towards one target (see the module docstring)."""

    def __init__(self, guide: Any, render: Any, per_latent: int, settings: ImageGuidance, target: Target,
                 scheduler: Any, seed: int) -> None:
        self.guide, self.render, self.per_latent, self.settings = guide, render, per_latent, settings
        self.scheduler, self.seed = scheduler, seed
        device = guide.device  # the target's tensors move to the model once, not at every step
        self.embeddings = target.embeddings.to(device, torch.float32)
        self.weights = target.weights.to(device, torch.float32)
        self.mask = None if target.mask is None else target.mask.to(device, torch.float32)
        self.area = None if target.mask is None else float(target.mask.sum())
        self.box = target.box
        timesteps = scheduler.timesteps.float()
        n = len(timesteps)
        first = min(int(settings.start * n), n - 1)
        last = int(settings.end * n)
        self.t_high = float(timesteps[first])
        self.t_low = float(timesteps[last]) if last < n else float("-inf")
        self.calls = 0

    def active(self, t: Tensor) -> bool:
        return self.t_low < float(t) <= self.t_high

    def loss(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """Sum over images of the weighted mean cutout distance to the target's embeddings."""
        height, width = images.shape[-2:]
        box = None
        if self.box is not None:
            p = self.per_latent
            box = tuple(min(v * p, limit) for v, limit in zip(self.box, (height, width, height, width)))
        crops = cutout_boxes(height, width, self.settings.cutouts, self.settings.cut_power, generator, box)
        size = self.guide.image_size
        batch = torch.cat([F.interpolate(images[:, :, t:t + s, l:l + s], size=(size, size), mode="bilinear",
                                         align_corners=False, antialias=s > size) for t, l, s in crops])
        features = self.guide.image_features(batch).view(len(crops), len(images), -1)
        dist = spherical_distance(features[:, :, None], self.embeddings[None, None])
        return (dist.mean(0) * self.weights).sum()

    def __call__(self, eps_fn: Any) -> Any:
        from .sampling import alpha_bar, predict_x0

        def guided(z: Tensor, t: Tensor) -> Tensor:
            eps = eps_fn(z, t)
            if not self.active(t) or self.settings.scale == 0:
                return eps
            abar = alpha_bar(self.scheduler, t).to(z.device, torch.float32)
            generator = torch.Generator("cpu").manual_seed(self.seed * 1000 + self.calls)
            self.calls += 1
            with torch.enable_grad():
                x0 = predict_x0(z.detach().float(), eps.detach().float(), abar).requires_grad_(True)
                loss = self.loss(self.render(x0), generator)
                (grad,) = torch.autograd.grad(loss, x0)
            if self.settings.smooth > 0:
                from .blur import gaussian_blur, kernel_for

                grad = gaussian_blur(grad, self.settings.smooth, kernel_for(self.settings.smooth))
            area = grad[0].numel()
            if self.mask is not None:  # a region's prompt acts inside its mask only
                grad = grad * self.mask
                area = self.area * grad.shape[1]
            rms = (grad.pow(2).sum(dim=(1, 2, 3), keepdim=True) / max(area, 1.0)).sqrt().clamp_min(1e-12)
            step = self.settings.scale * (1 - abar).sqrt() * grad / rms
            return eps + step.to(eps.dtype)

        return guided


def renderer_for(engine: Any, name: str) -> tuple[Any, int]:
    """(render, per_latent): latents -> RGB in [0, 1] with gradients, and how many rendered
    pixels one latent pixel spans (per side)."""
    from .latent_rgb import latent_rgb_map
    from .stroke_loss import decoder_renderer, linear_renderer
    from .tiny_decoder import tiny_decoder, tiny_renderer

    bundle = engine.bundle
    if name == "vae":
        return decoder_renderer(bundle.vae), bundle.vae_scale_factor
    if name == "tiny":
        tiny, why = tiny_decoder(bundle)
        if tiny is None:
            raise StudioError(f"This model has no usable tiny decoder ({why or 'none found'}): use the linear "
                              "image guidance renderer.")
        return tiny_renderer(tiny), bundle.vae_scale_factor
    weight, bias = latent_rgb_map(bundle.vae)
    return linear_renderer(weight, bias), 1


def region_image_prompts(regions: Sequence[Any], masks: Sequence[Tensor]) -> list[tuple[Any, Tensor]]:
    """(image prompt, latent mask) of every region that has one."""
    return [(r.image_prompt, m) for r, m in zip(regions, masks) if r.image_prompt is not None]


def image_prompt_guidances(engine: Any, request: Any, scheduler: Any,
                           regional: Sequence[tuple[Any, Tensor]] = ()) -> list[Any]:
    """The request's MGAD guidance as a list of :class:`core.pipeline.Guidance` (empty without
    image prompts): the whole picture's prompts, and each region's inside its mask."""
    from .clip_model import load_clip
    from .pipeline import Guidance

    settings = getattr(request, "image_guidance", None)
    regional = [(p, m) for p, m in regional if p.weight > 0]
    if settings is None:
        if not regional:
            return []
        settings = ImageGuidance()
    prompts = [p for p in settings.prompts if p.weight > 0]
    if settings.method != "clip":  # IP-Adapter: tokens in the prompt embeddings (core.ip_adapter), no guidance
        return []
    if settings.scale == 0 or (not prompts and not regional and settings.text_weight == 0):
        return []
    guide = load_clip(settings.clip_model or None, engine.bundle.device)
    render, per_latent = renderer_for(engine, settings.renderer)
    whole, weights = [], []
    if prompts:
        whole.append(image_embeddings(guide, prompts))
        weights += [p.weight for p in prompts]
    if settings.text_weight > 0:
        whole.append(guide.text_features([request.prompt]))
        weights.append(settings.text_weight)
    guidances = []
    if whole:
        target = Target(torch.cat(whole), torch.tensor(weights))
        guidances.append(Guidance(wrap=ClipGuidance(guide, render, per_latent, settings, target, scheduler,
                                                    request.seed)))
    for i, (prompt, mask) in enumerate(regional):
        box = mask_box(mask)
        if box is None:
            continue
        target = Target(image_embeddings(guide, [prompt]), torch.tensor([prompt.weight]), box=box, mask=mask)
        guidances.append(Guidance(wrap=ClipGuidance(guide, render, per_latent, settings, target, scheduler,
                                                    request.seed + 7919 * (i + 1))))
    return guidances
