"""Stroke guidance on the scribbles a person would draw: faithfulness on the demo model.

    python -m bench.bench_scribbles [--model FOLDER] [--scenes 4,21,26,35,46,51] [--steps 20] [--threads 2]

For each procedural scene: its flat-colour scribble (``procedural.render_scribble``, what the
Scribble page sends) and its caption in the oil style; then plain text-to-image (DDIM), SDEdit,
GradOP+ (decoder) and GradOP+ fast, all at the app's default fidelity with the same steps and
seed. Faithfulness is the mean squared error between the blurred output and the scribble (lower
is closer; ``stroke_guidance.faithfulness``). Where ``bench_stroke`` measures cost, and takes a
blurred sample of the model as its scribble, this measures what a user's flat scribble gets.
Writes bench/results/scribbles.{json,md}.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from PIL import Image

from bench.common import write_results
from core.engine import Engine
from core.loading import DEFAULT_MODEL_NAME, models_dir
from core.requests import GenerationRequest
from core.stroke_guidance import faithfulness, stroke_request
from training import procedural as P

SIZE = 256
METHODS = ("text-to-image", "SDEdit", "GradOP+ decoder", "GradOP+ fast")


def scene_faithfulness(engine: Engine, scene_seed: int, steps: int, seed: int) -> dict[str, float]:
    scene = P.sample_scene(scene_seed)
    scribble = Image.fromarray(P.render_scribble(scene, SIZE))
    prompt = P.caption(scene, "oil", np.random.default_rng(scene_seed))
    guided = stroke_request(prompt, scribble, steps=steps, seed=seed)
    requests = {"SDEdit": stroke_request(prompt, scribble, method="sdedit", steps=steps, seed=seed),
                "GradOP+ decoder": guided,
                "GradOP+ fast": stroke_request(prompt, scribble, steps=steps, seed=seed, fast=True)}
    plain = engine.generate(GenerationRequest(prompt=prompt, steps=steps, seed=seed, scheduler="ddim")).images
    out = {"text-to-image": faithfulness(plain, guided)[0]}
    for name, request in requests.items():
        out[name] = faithfulness(engine.run(request).images, guided)[0]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(models_dir() / DEFAULT_MODEL_NAME))
    parser.add_argument("--scenes", default="4,21,26,35,46,51", help="procedural scene seeds")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    engine = Engine.load(model=args.model, device="cpu")
    scenes = [int(s) for s in args.scenes.split(",")]
    t0 = time.perf_counter()
    rows = {s: scene_faithfulness(engine, s, args.steps, args.seed) for s in scenes}
    means = {m: float(np.mean([rows[s][m] for s in scenes])) for m in METHODS}
    lines = [f"Model `{args.model}`, {SIZE}x{SIZE}, DDIM {args.steps} steps, CFG 7.5, seed {args.seed}, "
             f"default fidelity; flat scribbles of procedural scenes {args.scenes} with their oil-style captions. "
             f"Faithfulness: MSE between the blurred output and the scribble (lower is closer). "
             f"{time.perf_counter() - t0:.0f} s.", "",
             "| method | mean | " + " | ".join(f"scene {s}" for s in scenes) + " |",
             "|---|---|" + "---|" * len(scenes)]
    for m in METHODS:
        lines.append(f"| {m} | {means[m]:.4f} | " + " | ".join(f"{rows[s][m]:.4f}" for s in scenes) + " |")
    table = "\n".join(lines)
    write_results("scribbles", {"model": args.model, "steps": args.steps, "seed": args.seed, "scenes": scenes,
                                "per_scene": {str(s): rows[s] for s in scenes}, "mean": means}, table)
    print(table)


if __name__ == "__main__":
    main()
