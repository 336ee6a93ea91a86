"""Image prompts (MGAD CLIP guidance, IP-Adapter): does a reference painting steer style and time of day?

    python -m bench.bench_image_prompt [--model M] [--clip C] [--count 60] [--scales 2,4] [--ip-scales 0.5,1]

Held-out paintings (dataset seed 707: never trained on by the demo model, its CLIP or the
classifier) are each the image prompt of one generation with the neutral text prompt
"a painting" (seed i for reference i). The project's attribute classifier (``training.eval``,
trained on real paintings and their VAE round trips, as in ``bench_quality``) then says
whether the generated picture has the reference's style, its time of day, and both. Rows:

* real references: the classifier on the references themselves (its ceiling);
* text only, "a painting": no image prompt (what the neutral prompt gives: about chance);
* the reference's own caption, no image prompt (what words can do);
* image prompt at each scale, through the fast linear latent->RGB map, and through the tiny
  decoder (``--renderers``);
* IP-Adapter at each of ``--ip-scales`` (``--ip-adapter``, default the bundled studio-ip-adapter
  trained for the demo model by ``python -m training.ip_adapter``);
* with ``--unseen-prompt TEXT`` (default "an image"), text only and IP-Adapter at
  ``--unseen-scale`` with that text instead: a vague prompt the adapter's training never used ("a painting" is one of
  its generic prompts, training.ip_adapter.GENERIC_PROMPTS).

Cost: seconds per 256 px, 20-step image, side by side in this run, and the ratio to text only.
Writes bench/results/NAME.{json,md} and NAME.png (references above their results).
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from bench.bench_quality import SIZE, attribute_classifier
from bench.common import RESULTS, write_results
from core.engine import Engine
from core.image_prompt import ImageGuidance, ImagePrompt
from core.loading import LoadOptions
from core.requests import GenerationRequest
from training import eval as E
from training import procedural as P

REFERENCE_SEED = 707  # dataset seed of the references (demo model 0, classifier 101, eval 202, bench 303, CLIP check 505)
NEUTRAL = "a painting"


def generate(engine: Engine, prompt: str, seed: int, steps: int, guidance: ImageGuidance | None) -> np.ndarray:
    request = GenerationRequest(prompt, width=SIZE, height=SIZE, steps=steps, seed=seed, image_guidance=guidance)
    return np.asarray(engine.run(request).images[0].convert("RGB"))


def scores(net: E.AttributeNet, images: np.ndarray, labels: dict[str, np.ndarray]) -> dict[str, float]:
    pred = E.predict(net, images)
    style = pred["style"] == labels["style"]
    time_ = pred["time"] == labels["time"]
    return {"style": float(style.mean()), "time": float(time_.mean()), "both": float((style & time_).mean())}


def run(args: argparse.Namespace) -> dict[str, Any]:
    say = E._stderr
    engine = Engine.load(LoadOptions(model=args.model, device="cpu"))
    config = E.EvalConfig(model=args.model, train_count=args.classifier_count,
                          vae_train_count=min(400, args.classifier_count // 5), steps=args.steps)
    net = attribute_classifier(engine, config, say)
    refs, labels, captions = E.render_set(REFERENCE_SEED, args.count, SIZE)
    rows: dict[str, dict[str, Any]] = {"real references": {**scores(net, refs, labels), "seconds": None}}
    settings: dict[str, tuple[str, ImageGuidance | None]] = {"text only, \"a painting\"": (NEUTRAL, None),
                                                             "the reference's caption": ("", None)}
    for renderer in args.renderers.split(","):
        for scale in (float(s) for s in args.scales.split(",") if s):
            settings[f"CLIP guidance, {renderer}, scale {scale:g}"] = (NEUTRAL, ImageGuidance(
                scale=scale, clip_model=args.clip, renderer=renderer, cutouts=args.cutouts))
    ip_scales = [float(s) for s in args.ip_scales.split(",") if s]
    for scale in ip_scales:
        settings[f"IP-Adapter, scale {scale:g}"] = (NEUTRAL, ImageGuidance(scale=scale, method="ip-adapter",
                                                                             ip_adapter=args.ip_adapter))
    if args.unseen_prompt and ip_scales:
        settings[f"text only, \"{args.unseen_prompt}\""] = (args.unseen_prompt, None)
        settings[f"IP-Adapter, scale {args.unseen_scale:g}, \"{args.unseen_prompt}\""] = (
            args.unseen_prompt, ImageGuidance(scale=args.unseen_scale, method="ip-adapter", ip_adapter=args.ip_adapter))
    images: dict[str, np.ndarray] = {}
    for name, (prompt, guidance) in settings.items():
        out = np.empty_like(refs)
        started = time.perf_counter()
        for i in range(args.count):
            ig = None
            if guidance is not None:
                ig = dataclasses.replace(guidance, prompts=(ImagePrompt(Image.fromarray(refs[i])),))
            out[i] = generate(engine, prompt or captions[i], args.seed + i, args.steps, ig)
        seconds = (time.perf_counter() - started) / args.count
        rows[name] = {**scores(net, out, labels), "seconds": seconds}
        images[name] = out
        say(f"{name}: style {rows[name]['style']:.0%} time {rows[name]['time']:.0%} both {rows[name]['both']:.0%} "
            f"{seconds:.2f} s/image\n")
    base = rows["text only, \"a painting\""]["seconds"]
    for row in rows.values():
        row["cost"] = row["seconds"] / base if row["seconds"] else None
    grid_rows = [refs[:8]] + [images[n][:8] for n in images]
    Image.fromarray(np.concatenate([np.concatenate(list(r), 1) for r in grid_rows], 0)).resize(
        (8 * 128, 128 * len(grid_rows))).save(RESULTS / f"{args.name}.png")
    return {"rows": rows, "count": args.count, "steps": args.steps, "model": engine.bundle.location,
            "clip": args.clip, "ip_adapter": args.ip_adapter, "grid_rows": ["references"] + list(images), "reference_seed": REFERENCE_SEED,
            "chance": {"style": 1 / len(P.STYLES), "time": 1 / len(P.TIMES),
                       "both": 1 / (len(P.STYLES) * len(P.TIMES))}}


def markdown(report: dict[str, Any]) -> str:
    pct = lambda v: f"{100 * v:.1f}%"  # noqa: E731
    lines = ["# Image prompts (MGAD CLIP guidance and IP-Adapter)\n",
             f"`{report['command']}` on {report['model']} with CLIP {report['clip']} and IP-Adapter "
             f"{report.get('ip_adapter')}; {report['count']} held-out "
             f"references (dataset seed {report['reference_seed']}), 256 px, DDIM {report['steps']} steps, CFG 7.5, "
             f"text prompt \"{NEUTRAL}\" unless said. The attribute classifier judges whether the generated picture "
             f"has the reference's style, time of day, and both (chance {pct(report['chance']['style'])} / "
             f"{pct(report['chance']['time'])} / {pct(report['chance']['both'])}).\n",
             "| row | style | time of day | both | s / image | vs text only |", "|---|---|---|---|---|---|"]
    for name, row in report["rows"].items():
        secs = f"{row['seconds']:.2f}" if row["seconds"] else "-"
        cost = f"{row['cost']:.2f}x" if row.get("cost") else "-"
        lines.append(f"| {name} | {pct(row['style'])} | {pct(row['time'])} | {pct(row['both'])} | {secs} | {cost} |")
    lines.append(f"\nGrid (bench/results/{report['name']}.png), top to bottom: " + "; ".join(report["grid_rows"])
                 + f". {report['seconds']:.0f} s in all.")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model folder or name (default: the bundled demo model)")
    parser.add_argument("--clip", default="studio-clip", help="CLIP folder (default: the bundled studio-clip)")
    parser.add_argument("--count", type=int, default=60, help="held-out reference paintings")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scales", default="2,4", help="image guidance scales to measure")
    parser.add_argument("--renderers", default="linear", help="comma-separated: linear, tiny, vae")
    parser.add_argument("--ip-scales", default="0.5,1,1.5,2", help="IP-Adapter scales to measure (empty: none)")
    parser.add_argument("--ip-adapter", default="studio-ip-adapter", help="IP-Adapter folder or name")
    parser.add_argument("--unseen-prompt", default="an image",
                        help="a vague prompt the adapter never trained with (empty: no such rows)")
    parser.add_argument("--unseen-scale", type=float, default=1.5, help="the IP-Adapter scale of that row")
    parser.add_argument("--cutouts", type=int, default=16)
    parser.add_argument("--classifier-count", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default="image-prompt")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    RESULTS.mkdir(exist_ok=True)
    report = run(args)
    report.update(name=args.name, seconds=time.perf_counter() - started,
                  command="python -m bench.bench_image_prompt " + " ".join(argv or __import__("sys").argv[1:]))
    table = markdown(report)
    write_results(args.name, report, table)
    print(table)


if __name__ == "__main__":
    main()
