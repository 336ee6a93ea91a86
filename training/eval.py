"""Evaluate a model on the procedural paintings with an attribute classifier.

    python -m training.eval --model pretrained_models/studio-demo --count 60 --train-count 2000 \\
        --out bench/results/eval

1. Renders ``--train-count`` procedural paintings (dataset seed ``--train-data-seed``, 101)
   and trains a small CNN on them: style (5 classes), time of day (3) and presence of the
   main objects (11 labels, :data:`training.procedural.ATTRIBUTE_OBJECTS`). The first
   ``--vae-train-count`` of them are added again after a round trip through the model's own
   VAE (generated images are decoded by it, so they are blurrier than the renders).
2. Renders ``--count`` held-out scenes (dataset seed ``--heldout-data-seed``, 202). Their
   images are the "real" rows (as rendered, and after a VAE round trip: the ceiling for
   generated images); their captions are the prompts the model generates from, through
   core's :class:`~core.engine.Engine` (what the app produces), seed ``--seed + i``.
3. Reports the classifier's accuracy on the three sets and writes ``OUT.json`` and
   ``OUT.md``. The demo model was trained on ``make_dataset --seed 0`` (items 0..5999), so
   neither set overlaps its training data.

Scenes are made exactly as :mod:`training.make_dataset` makes item ``i`` of a dataset, in
memory (no files). User errors exit with code 2 and one line on stderr.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from core.cli import EXIT_USER_ERROR, OneLineParser, add_common, load_options, quiet_libraries
from core.engine import Engine
from core.errors import StudioError
from core.loading import LoadOptions
from core.requests import GenerationRequest
from core.vae_codec import decode_latents, encode_image, require_multiple_of

from . import procedural as P
from .make_dataset import item_scene

log = logging.getLogger(__name__)

DEMO_TRAINING_SEED = 0  # make_dataset seed of the demo model's training set (items 0..5999)
TRAIN_DATA_SEED = 101  # dataset seed of the classifier's training images
HELDOUT_DATA_SEED = 202  # dataset seed of the held-out scenes (real images, prompts)
OBJECTS: tuple[str, ...] = P.ATTRIBUTE_OBJECTS
CHANCE = {"style": 1 / len(P.STYLES), "time": 1 / len(P.TIMES)}
TARGET = 0.70  # issue: at least 70% on style and on time of day for generated images
ROWS = (("real", "real held-out"), ("real_vae", "real held-out after VAE round trip"),
        ("generated", "generated from held-out captions"))

Progress = Callable[[str], None]


# -------------------------------------------------------------------------------- data


def resize(images: np.ndarray, size: int) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, size, size, 3) uint8 (area filter when shrinking)."""
    if images.shape[1] == size and images.shape[2] == size:
        return images
    interp = cv2.INTER_AREA if size < images.shape[1] else cv2.INTER_CUBIC
    out = np.empty((len(images), size, size, 3), np.uint8)
    for i, img in enumerate(images):
        out[i] = cv2.resize(img, (size, size), interpolation=interp)
    return out


def render_set(seed: int, count: int, size: int, resize_to: int | None = None
               ) -> tuple[np.ndarray, dict[str, np.ndarray], list[str]]:
    """Items ``0..count-1`` of the dataset ``seed``, rendered at ``size`` in memory.

    Returns images (N, S, S, 3) uint8 (S = ``resize_to`` or ``size``), labels
    ``{"style": (N,) int64 index into P.STYLES, "time": (N,) int64 index into P.TIMES,
    "objects": (N, len(OBJECTS)) bool}`` (from :func:`P.scene_labels`), and the captions.
    """
    side = resize_to or size
    images = np.empty((count, side, side, 3), np.uint8)
    styles, times = np.empty(count, np.int64), np.empty(count, np.int64)
    objects = np.empty((count, len(OBJECTS)), bool)
    captions = []
    for i in range(count):
        scene, style, text = item_scene(seed, i)
        img = P.render_painting(scene, size, style)
        images[i] = img if side == size else resize(img[None], side)[0]
        labels = P.scene_labels(scene, style)
        styles[i], times[i] = P.STYLES.index(labels["style"]), P.TIMES.index(labels["time"])
        objects[i] = [labels["objects"][name] for name in OBJECTS]
        captions.append(text)
    return images, {"style": styles, "time": times, "objects": objects}, captions


@torch.no_grad()
def vae_round_trip(engine: Engine, images: np.ndarray, batch_size: int = 8,
                   progress: Progress | None = None) -> np.ndarray:
    """Encode (posterior mean) and decode uint8 images through the model's VAE, as
    img2img does: the blur and colour shifts every generated image carries."""
    bundle = engine.bundle
    out = np.empty_like(images)
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        latents = torch.cat([encode_image(bundle.vae, Image.fromarray(img), bundle.device, bundle.dtype)
                             for img in chunk])
        pixels = decode_latents(bundle.vae, latents)  # (B, 3, H, W) in [0, 1]
        out[start:start + len(chunk)] = (pixels.permute(0, 2, 3, 1).float().cpu().numpy() * 255).round()
        if progress:
            progress(f"VAE round trip {start + len(chunk)}/{len(images)}")
    return out


def generate_set(engine: Engine, captions: Sequence[str], size: int, steps: int, guidance: float,
                 seed: int, progress: Progress | None = None) -> tuple[np.ndarray, list[str]]:
    """One image per caption through the engine (image ``i`` uses seed ``seed + i``);
    returns the images and the engine's warnings (e.g. prompts cut at the token limit)."""
    out = np.empty((len(captions), size, size, 3), np.uint8)
    warnings: list[str] = []
    for i, text in enumerate(captions):
        request = GenerationRequest(prompt=text, width=size, height=size, steps=steps,
                                    guidance_scale=guidance, seed=seed + i)
        result = engine.generate(request)
        out[i] = np.asarray(result.images[0].convert("RGB"))
        warnings += [w for w in result.warnings if w not in warnings]
        if progress:
            progress(f"generating {i + 1}/{len(captions)}")
    return out, warnings


# -------------------------------------------------------------------------- classifier


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class AttributeNet(nn.Module):
    """A small CNN with three heads: style logits (B, 5), time logits (B, 3), object
    logits (B, 11). Global average and max pooling: style is a texture, so where a
    feature occurs matters less than how much of it there is."""

    def __init__(self, input_size: int = 96, width: int = 16) -> None:
        super().__init__()
        self.input_size = input_size
        w = width
        self.features = nn.Sequential(
            _block(3, w, 2), _block(w, 2 * w, 2), _block(2 * w, 2 * w, 1),  # (B, 2w, S/4, S/4)
            _block(2 * w, 4 * w, 2), _block(4 * w, 4 * w, 1),  # (B, 4w, S/8, S/8)
            _block(4 * w, 8 * w, 2), _block(8 * w, 8 * w, 1),  # (B, 8w, S/16, S/16)
        )
        self.heads = nn.Linear(16 * w, len(P.STYLES) + len(P.TIMES) + len(OBJECTS))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        f = self.features(x)
        logits = self.heads(torch.cat([f.mean((2, 3)), f.amax((2, 3))], 1))
        return logits.split([len(P.STYLES), len(P.TIMES), len(OBJECTS)], 1)


def to_input(images: np.ndarray, size: int) -> Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, size, size) in [-1, 1]."""
    return torch.from_numpy(resize(images, size)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of (1, C, H, W), reflect padding."""
    radius = max(1, math.ceil(2.5 * sigma))
    k = torch.exp(-torch.arange(-radius, radius + 1, dtype=x.dtype) ** 2 / (2 * sigma * sigma))
    k = (k / k.sum()).to(x.device)
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def augment(x: Tensor, g: torch.Generator) -> Tensor:
    """Random horizontal flip, shift (crop of a padded image, up to 1/16 of the side), mild
    blur (half the images; sigma 0.3..1.1 px at a 128 px input, scaled with the input) and
    a mild contrast jitter (+-8%). ``x``: (B, 3, S, S) in [-1, 1]."""
    b, _, s, _ = x.shape
    pad = max(1, s // 16)
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    r = torch.rand(b, 6, generator=g)
    out = []
    for i in range(b):
        dy, dx = int(r[i, 0] * (2 * pad + 1)), int(r[i, 1] * (2 * pad + 1))
        img = padded[i:i + 1, :, dy:dy + s, dx:dx + s]
        if r[i, 2] < 0.5:
            img = img.flip(-1)
        if r[i, 3] < 0.5:
            img = _gaussian_blur(img, (0.3 + 0.8 * float(r[i, 4])) * s / 128)
        out.append(img)
    x = torch.cat(out)
    gain = 1 + 0.16 * (r[:, 5:6, None, None] - 0.5)
    mean = x.mean((1, 2, 3), keepdim=True)
    return ((x - mean) * gain + mean).clamp(-1, 1)


def train_classifier(images: np.ndarray, labels: dict[str, np.ndarray], epochs: int = 20, seed: int = 0,
                     input_size: int = 96, width: int = 16, batch_size: int = 32, lr: float = 3e-3,
                     object_weight: float = 3.0, progress: Progress | None = None) -> AttributeNet:
    """Train :class:`AttributeNet` with Adam (one-cycle schedule: warm-up, then cosine decay)
    on uint8 (N, H, W, 3) images and :func:`render_set` labels. Loss: cross-entropy for style
    and time plus ``object_weight`` x binary cross-entropy for the objects. Deterministic
    given ``seed`` (on CPU, for a given thread count)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = AttributeNet(input_size, width)
    x_all = torch.from_numpy(resize(images, input_size))  # uint8 (N, S, S, 3): 4x smaller than float
    style = torch.from_numpy(labels["style"])
    times = torch.from_numpy(labels["time"])
    objects = torch.from_numpy(labels["objects"]).float()
    g = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(x_all) / batch_size)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * steps_per_epoch, pct_start=0.15)
    net.train()
    for epoch in range(epochs):
        perm = torch.randperm(len(x_all), generator=g)
        total = 0.0
        for step in range(steps_per_epoch):
            idx = perm[step * batch_size:(step + 1) * batch_size]
            x = augment(x_all[idx].permute(0, 3, 1, 2).float() / 127.5 - 1.0, g)
            s_logits, t_logits, o_logits = net(x)
            loss = (F.cross_entropy(s_logits, style[idx]) + F.cross_entropy(t_logits, times[idx])
                    + object_weight * F.binary_cross_entropy_with_logits(o_logits, objects[idx]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        if progress:
            progress(f"classifier epoch {epoch + 1}/{epochs}: loss {total / steps_per_epoch:.3f}")
    return net.eval()


@torch.no_grad()
def predict(net: AttributeNet, images: np.ndarray, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Predicted labels, in :func:`render_set`'s format."""
    net.eval()
    outs: list[tuple[Tensor, ...]] = []
    for start in range(0, len(images), batch_size):
        outs.append(net(to_input(images[start:start + batch_size], net.input_size)))
    s, t, o = (torch.cat(parts) for parts in zip(*outs))
    return {"style": s.argmax(1).numpy(), "time": t.argmax(1).numpy(), "objects": (o > 0).numpy()}


def _confusion(true: np.ndarray, pred: np.ndarray, n: int) -> list[list[int]]:
    m = np.zeros((n, n), np.int64)
    np.add.at(m, (true, pred), 1)
    return m.tolist()


def evaluate(net: AttributeNet, images: np.ndarray, labels: dict[str, np.ndarray]) -> dict[str, Any]:
    """Accuracies of ``net`` on labelled images: style, time, objects (mean over the
    per-label accuracies of OBJECTS), per-object accuracy, confusion matrices (rows: true)."""
    pred = predict(net, images)
    per_object = (pred["objects"] == labels["objects"]).mean(0)
    return {
        "style": float((pred["style"] == labels["style"]).mean()),
        "time": float((pred["time"] == labels["time"]).mean()),
        "objects": float(per_object.mean()),
        "count": int(len(images)),
        "per_object": {name: float(a) for name, a in zip(OBJECTS, per_object)},
        "style_confusion": _confusion(labels["style"], pred["style"], len(P.STYLES)),
        "time_confusion": _confusion(labels["time"], pred["time"], len(P.TIMES)),
    }


def chance_levels(labels: dict[str, np.ndarray]) -> dict[str, float]:
    """Uniform chance for style and time; majority-class baselines on ``labels``."""
    present = labels["objects"].mean(0)
    return {**CHANCE,
            "time_majority": float(np.bincount(labels["time"], minlength=len(P.TIMES)).max() / len(labels["time"])),
            "objects_majority": float(np.maximum(present, 1 - present).mean())}


# ------------------------------------------------------------------------------ report


@dataclass(frozen=True)
class EvalConfig:
    """One evaluation run."""

    model: str | None = None  # anything core's loader accepts; None: the bundled demo model
    count: int = 60  # held-out scenes (real images and prompts)
    train_count: int = 2000  # classifier training images
    vae_train_count: int = 400  # of those, how many are added again after a VAE round trip
    epochs: int = 20
    size: int = 256  # render and generation size (multiple of 8)
    input_size: int = 96  # the classifier's input side (images are shrunk to it)
    steps: int = 20
    guidance: float = 7.5
    seed: int = 0  # classifier initialisation and batches; generation seeds seed + i
    train_data_seed: int = TRAIN_DATA_SEED
    heldout_data_seed: int = HELDOUT_DATA_SEED

    def __post_init__(self) -> None:
        if self.count < 1:
            raise StudioError(f"--count must be at least 1, got {self.count}.")
        if self.train_count < 10:
            raise StudioError(f"--train-count must be at least 10, got {self.train_count}.")
        if not 0 <= self.vae_train_count <= self.train_count:
            raise StudioError(f"--vae-train-count must be between 0 and --train-count ({self.train_count}), "
                              f"got {self.vae_train_count}.")
        if self.size < 8:
            raise StudioError(f"--size must be at least 8, got {self.size}.")
        require_multiple_of(self.size, "--size")
        if self.epochs < 1:
            raise StudioError(f"--epochs must be at least 1, got {self.epochs}.")
        if self.input_size < 32:
            raise StudioError(f"--input-size must be at least 32, got {self.input_size}.")
        if self.train_data_seed == self.heldout_data_seed:
            raise StudioError("--train-data-seed and --heldout-data-seed must differ (held-out means unseen).")
        # the generation settings, checked now rather than after training
        GenerationRequest(prompt="", width=self.size, height=self.size, steps=self.steps,
                          guidance_scale=self.guidance, seed=self.seed + self.count - 1)


def _stderr(message: str) -> None:
    """One progress line on stderr, rewritten in place on a terminal."""
    if sys.stderr.isatty():
        sys.stderr.write(f"\r{message}\033[K")
    elif message.strip():
        sys.stderr.write(f"{message.rstrip()}\n")
    sys.stderr.flush()


def run_eval(config: EvalConfig, engine: Engine | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """Train the classifier, render and generate the held-out sets, and return the report.
    Without ``engine`` the model ``config.model`` is loaded first (before any other work)."""
    say = progress or (lambda message: None)
    engine = engine or Engine.load(LoadOptions(model=config.model))
    timings: dict[str, float] = {"load": round(engine.load_seconds, 3)}

    def timed(name: str, fn: Callable[[], Any]) -> Any:  # seconds, summed per name
        start = time.perf_counter()
        value = fn()
        timings[name] = round(timings.get(name, 0.0) + time.perf_counter() - start, 3)
        return value

    c = config
    train_x, train_y, _ = timed("render", lambda: render_set(c.train_data_seed, c.train_count, c.size, c.input_size))
    if c.vae_train_count:  # the first items again, at full size for the VAE (rendering is the cheap part)
        full, _, _ = timed("render", lambda: render_set(c.train_data_seed, c.vae_train_count, c.size))
        vae_x = timed("vae", lambda: resize(vae_round_trip(engine, full, progress=lambda m: say(f"training set: {m}")),
                                            c.input_size))
        train_x = np.concatenate([train_x, vae_x])
        train_y = {k: np.concatenate([v, v[:c.vae_train_count]]) for k, v in train_y.items()}
    say(f"training the classifier on {len(train_x)} images")
    net = timed("classifier_train", lambda: train_classifier(train_x, train_y, c.epochs, c.seed, c.input_size,
                                                               progress=say))
    real_x, real_y, captions = timed("render", lambda: render_set(c.heldout_data_seed, c.count, c.size))
    real_vae_x = timed("vae", lambda: vae_round_trip(engine, real_x, progress=lambda m: say(f"held-out: {m}")))
    gen_x, warnings = timed("generate", lambda: generate_set(engine, captions, c.size, c.steps, c.guidance, c.seed,
                                                   progress=say))
    say("done\n")
    rows = [{"row": key, "name": name, **evaluate(net, images, real_y)}
            for (key, name), images in zip(ROWS, (real_x, real_vae_x, gen_x))]
    generated = rows[-1]
    return {
        "model": engine.bundle.location, "model_name": engine.bundle.name, "device": str(engine.bundle.device),
        "config": asdict(c),
        "data": {"train_data_seed": c.train_data_seed, "heldout_data_seed": c.heldout_data_seed,
                 "demo_model_training_seed": DEMO_TRAINING_SEED,
                 "classifier_train_images": len(train_x), "vae_round_trip_train_copies": c.vae_train_count,
                 "objects": list(OBJECTS), "styles": list(P.STYLES), "times": list(P.TIMES)},
        "classifier": {"input_size": c.input_size, "epochs": c.epochs,
                       "parameters": sum(p.numel() for p in net.parameters())},
        "rows": rows,
        "chance": chance_levels(real_y),
        "target": {"min_accuracy": TARGET, "style_met": generated["style"] >= TARGET,
                   "time_met": generated["time"] >= TARGET},
        "prompts": list(captions),
        "warnings": warnings,
        "timings": timings,
    }


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def format_markdown(report: dict[str, Any]) -> str:
    """The report as a markdown table with a short preamble."""
    c, d, t = report["config"], report["data"], report["timings"]
    chance = report["chance"]
    lines = [
        f"Attribute-classifier eval of `{report['model']}`: {c['size']} px, {c['steps']} steps, "
        f"guidance {c['guidance']}, generation seeds {c['seed']}..{c['seed'] + c['count'] - 1}.",
        f"Classifier: {d['classifier_train_images']} images at {c['input_size']} px "
        f"({c['train_count']} renders of dataset seed {d['train_data_seed']}, plus VAE round trips of the first "
        f"{d['vae_round_trip_train_copies']}), {c['epochs']} epochs, trained in {t.get('classifier_train', 0):.1f} s. "
        f"Held-out scenes: dataset seed {d['heldout_data_seed']} (the demo model was trained on seed "
        f"{d['demo_model_training_seed']}). Generation: {t.get('generate', 0):.1f} s.",
        "",
        "| images | style | time of day | objects (mean per label) | count |",
        "|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        lines.append(f"| {row['name']} | {_pct(row['style'])} | {_pct(row['time'])} | {_pct(row['objects'])} "
                     f"| {row['count']} |")
    lines.append(f"| chance (uniform; objects: majority label) | {_pct(chance['style'])} | {_pct(chance['time'])} "
                 f"| {_pct(chance['objects_majority'])} | |")
    target = report["target"]
    met = "met" if target["style_met"] and target["time_met"] else "not met"
    lines += ["", f"Target (generated: at least {_pct(target['min_accuracy'])} on style and on time of day): {met}."]
    if report.get("warnings"):
        warnings = report["warnings"]
        lines.append(f"The engine warned {len(warnings)} time(s) while generating, e.g.: {warnings[0]}")
    return "\n".join(lines)


def report_paths(out: str | Path) -> tuple[Path, Path]:
    """(OUT.json, OUT.md); a trailing .json or .md on ``out`` is dropped."""
    out = Path(out)
    if out.suffix in (".json", ".md"):
        out = out.with_suffix("")
    return out.with_name(out.name + ".json"), out.with_name(out.name + ".md")


def write_report(report: dict[str, Any], out: str | Path) -> tuple[Path, Path]:
    """Write ``OUT.json`` and ``OUT.md``; returns their paths."""
    json_path, md_path = report_paths(out)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    md_path.write_text(format_markdown(report) + "\n")
    return json_path, md_path


# --------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m training.eval", description=__doc__.split("\n\n")[0])
    d = EvalConfig()
    parser.add_argument("--count", type=int, default=d.count, help="held-out scenes: real images and prompts")
    parser.add_argument("--train-count", type=int, default=d.train_count, help="classifier training images")
    parser.add_argument("--vae-train-count", type=int, default=d.vae_train_count,
                        help="training images also added after a VAE round trip (0: none)")
    parser.add_argument("--epochs", type=int, default=d.epochs)
    parser.add_argument("--size", type=int, default=d.size, help="render and generation size (multiple of 8)")
    parser.add_argument("--input-size", type=int, default=d.input_size, help="the classifier's input size")
    parser.add_argument("--steps", type=int, default=d.steps)
    parser.add_argument("--guidance", type=float, default=d.guidance, help="classifier-free guidance scale")
    parser.add_argument("--seed", type=int, default=d.seed, help="classifier seed; image i is generated with seed + i")
    parser.add_argument("--train-data-seed", type=int, default=d.train_data_seed)
    parser.add_argument("--heldout-data-seed", type=int, default=d.heldout_data_seed)
    parser.add_argument("--threads", type=int, help="torch and OpenCV threads (default: their own)")
    parser.add_argument("--out", default="bench/results/eval", help="writes OUT.json and OUT.md")
    add_common(parser)
    return parser


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    return EvalConfig(model=args.model, count=args.count, train_count=args.train_count,
                      vae_train_count=args.vae_train_count, epochs=args.epochs, size=args.size,
                      input_size=args.input_size, steps=args.steps, guidance=args.guidance, seed=args.seed,
                      train_data_seed=args.train_data_seed, heldout_data_seed=args.heldout_data_seed)


def set_threads(threads: int | None) -> None:
    if threads is None:
        return
    if threads < 1:
        raise StudioError(f"--threads must be at least 1, got {threads}.")
    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)


def check_writable(out: str) -> None:
    """Fail before the run, not after it, when the report cannot be written."""
    folder = report_paths(out)[0].parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StudioError(f"Cannot create the output folder {folder} ({exc.strerror}): choose another --out.") from exc
    if not os.access(folder, os.W_OK):
        raise StudioError(f"Cannot write to {folder}: choose another --out.")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    if args.quiet or args.json:
        quiet_libraries()
    try:
        config = config_from_args(args)
        set_threads(args.threads)
        check_writable(args.out)
        if not args.quiet:
            sys.stderr.write("loading model...\n")
        engine = Engine.load(load_options(args))  # a missing model fails here, before any work
        report = run_eval(config, engine, progress=None if args.quiet else _stderr)
    except StudioError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return EXIT_USER_ERROR
    json_path, md_path = write_report(report, args.out)
    report["outputs"] = [str(json_path), str(md_path)]
    sys.stdout.write(json.dumps(report, indent=2) + "\n" if args.json else md_path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
