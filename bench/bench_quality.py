"""The quality bench: do region prompts and stroke guidance do what their papers claim?

    python -m bench.bench_quality [--model M] [--scenes 50] [--stroke-scenes 50] [--steps 20]
                                  [--parts regions,stroke,text] [--name quality] [--threads 2]

Held-out procedural scenes (dataset seed 303: never used to train the demo model, seed 0,
nor the attribute classifier, seed 101) measure each method's published claim:

* **Region prompts (MultiDiffusion).** A daytime scene's region map (``procedural.render_region_map``);
  every region but the sky carries its own object and colour words ("a red sun", "purple
  mountains") in the scene's style; the sky is the background prompt. A region counts as right
  when the mean colour of the output inside its (eroded) mask is nearest, in CIE Lab, to the
  region's named colour among all colour words of the grammar (``procedural.PALETTE``). Rows:
  exact MultiDiffusion, ``--fast`` (bounding-box crops), and two baselines: text-to-image from
  the background prompt alone and from the scene's full caption; the real procedural painting
  of the same scene is the ceiling of the measure. Daytime only: by day an object's painted
  colour is its named colour (sunset and night light shift it, ``procedural.lit``).
* **Stroke guidance (GradOP, Singh et al. CVPR 2023).** Flat scribbles of held-out scenes
  (``procedural.render_scribble``) with their captions. Faithfulness: MSE between the blurred
  output and the scribble (``stroke_guidance.faithfulness``, as ``bench_scribbles``). Realism:
  Frechet distance between the generated images and real held-out paintings in the feature
  space of the attribute classifier of ``training.eval`` (its pooled last convolution block:
  global mean and max, 256 numbers), and the classifier's style accuracy. Sweeps: SDEdit
  strength 0.5..0.9, GradOP+ fidelity 0..1, GradOP+ fast, GradOP. The paper's claim: at equal
  faithfulness GradOP+ is more realistic (a lower distance) than SDEdit.
* **Composed (GradOP+ with region prompts, issue 12).** The region scenes' flat scribbles
  (``procedural.render_scribble``), each region prompted as above and the sky as background:
  region colour accuracy and faithfulness (as for stroke guidance) of GradOP+ with region
  prompts (exact and fast) against MultiDiffusion alone and GradOP+ alone (full caption).
* **Panoramas (window modes).** Held-out captions as panorama prompts, 4 native windows wide,
  made with exact sliding windows (MultiDiffusion) and shifted windows (SpotDiffusion):
  realism as above, of the panoramas' native-size crops against the same real paintings (beside
  plain text-to-image of the same captions), and ``bench_regions``' seam score at the window
  borders (1.0 = no seam).
* **Text.** Style, time of day and objects found by the classifier in images generated from
  held-out captions (``training.eval``'s rows).

Writes bench/results/NAME.{json,md} and NAME-stroke.png (realism against faithfulness).
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import cv2
import numpy as np
import torch
from PIL import Image, ImageDraw

from bench.common import RESULTS, psnr, write_results
from core.engine import Engine
from core.loading import LoadOptions
from core.panorama import MultiDiffusionRequest
from core.region_map import Region
from core.requests import GenerationRequest
from core.stroke_guidance import faithfulness, stroke_request
from training import eval as E
from training import procedural as P
from training.make_dataset import item_scene

HELDOUT_SEED = 303  # dataset seed of the bench's scenes (demo model: 0; classifier: 101; eval: 202)
SIZE = 256
MIN_REGION = 0.01  # regions smaller than this share of the picture are not scored
SDEDIT_STRENGTHS = (0.5, 0.6, 0.7, 0.8, 0.9)
GRADOP_PLUS_FIDELITIES = (0.0, 0.25, 0.5, 0.75, 1.0)
FAST_FIDELITIES = (0.5, 1.0)
Say = Callable[[str], None]
PARTS = ("regions", "vae", "composed", "stroke", "panorama", "text")


# ------------------------------------------------------------------------------- colours

def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIE Lab (D65) of sRGB colours in 0..255, (..., 3) float."""
    c = np.asarray(rgb, np.float64) / 255.0
    c = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    m = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = c @ m.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


COLOUR_WORDS = tuple(P.PALETTE)
_PALETTE_LAB = srgb_to_lab(np.array([P.PALETTE[w] for w in COLOUR_WORDS], np.float64))


def nearest_colour_word(rgb: Sequence[float]) -> str:
    """The grammar's colour word nearest to ``rgb`` in Lab (Euclidean, CIE76)."""
    d = np.linalg.norm(_PALETTE_LAB - srgb_to_lab(np.asarray(rgb, np.float64)), axis=1)
    return COLOUR_WORDS[int(np.argmin(d))]


def mean_colour(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean RGB of ``image`` (H, W, 3) inside a bool mask, eroded by 2 px where that leaves pixels
    (edges blur into the neighbours)."""
    eroded = cv2.erode(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    inside = eroded if eroded.sum() >= 16 else mask
    return image[inside].astype(np.float64).mean(0)


# ------------------------------------------------------------------------------- regions

@dataclass
class RegionScene:
    """A held-out scene laid out as a region map with one prompt per region."""

    index: int
    scene: P.Scene
    style: str
    caption: str  # the scene's full caption
    background: str  # the sky's prompt
    regions: list[tuple[str, str, np.ndarray]]  # (kind, prompt, bool mask (H, W)) of scored regions
    colours: list[str]  # each region's named colour word


def region_phrase(scene: P.Scene, kind: str, rng: np.random.Generator) -> tuple[str, str]:
    """(the words of one region, its named colour word): "a red sun", "purple mountains"."""
    if kind == "ground":
        return f"{scene.ground} ground", scene.ground
    return P.coloured_phrase(scene, kind, rng), scene.of(kind)[0].colour


def region_scenes(count: int, size: int = SIZE, seed: int = HELDOUT_SEED) -> list[RegionScene]:
    """The first ``count`` daytime scenes of the held-out set that have a region to score."""
    out: list[RegionScene] = []
    index = 0
    while len(out) < count:
        scene, style, text = item_scene(seed, index)
        index += 1
        if scene.time != "day":
            continue
        rng = np.random.default_rng([seed, index, 7])
        labels, names, _ = P.render_region_map(scene, size)
        id_to_kind = {v: k for k, v in P.LABEL_IDS.items()}
        style_phrase = P.style_phrase(style, rng)
        regions, colours = [], []
        for label in names:
            kind = id_to_kind[label]
            mask = labels == label
            if kind == "sky" or mask.mean() < MIN_REGION:
                continue
            words, colour = region_phrase(scene, kind, rng)
            regions.append((kind, f"{style_phrase} of {words}", mask))
            colours.append(colour)
        if regions:
            background = f"{style_phrase} of {P.with_article(scene.sky)} sky by day"
            out.append(RegionScene(index - 1, scene, style, text, background, regions, colours))
    return out


# Each colour word's family: the colour of the app's palette it is a shade of ("dark red" and
# "red" are red; "navy" is blue). A secondary, looser measure beside the exact word.
COLOUR_FAMILY = {
    "white": "white", "silver": "grey", "grey": "grey", "dark grey": "grey", "black": "black",
    "red": "red", "dark red": "red", "orange": "orange", "yellow": "yellow", "golden": "yellow",
    "pink": "pink", "purple": "purple", "violet": "purple", "lavender": "purple",
    "blue": "blue", "light blue": "blue", "dark blue": "blue", "navy": "blue", "indigo": "blue",
    "teal": "teal", "turquoise": "teal", "green": "green", "dark green": "green", "light green": "green",
    "olive": "green", "brown": "brown", "ochre": "brown", "beige": "brown",
}


def region_words(image: np.ndarray, item: RegionScene) -> list[str]:
    """The colour word nearest to each scored region's mean colour."""
    return [nearest_colour_word(mean_colour(image, mask)) for _, _, mask in item.regions]


def score_words(words: Sequence[str], item: RegionScene) -> list[bool]:
    return [word == colour for word, colour in zip(words, item.colours)]


def score_regions(image: np.ndarray, item: RegionScene) -> list[bool]:
    return score_words(region_words(image, item), item)


def score_families(words: Sequence[str], item: RegionScene) -> list[bool]:
    return [COLOUR_FAMILY[word] == COLOUR_FAMILY[colour] for word, colour in zip(words, item.colours)]


def region_methods(engine: Engine, item: RegionScene, steps: int, seed: int) -> dict[str, np.ndarray]:
    """The image of each method for one scene (uint8 (H, W, 3))."""
    regions = tuple(Region(mask=Image.fromarray(mask.astype(np.uint8) * 255), prompt=prompt, name=kind)
                    for kind, prompt, mask in item.regions)
    common = dict(width=SIZE, height=SIZE, steps=steps, seed=seed)

    def md(fast: bool, attention: bool = False) -> np.ndarray:
        request = MultiDiffusionRequest(prompt=item.background, regions=regions, fast=fast, attention=attention,
                                        scheduler="ddim", **common)
        return np.asarray(engine.run(request).images[0].convert("RGB"))

    def t2i(prompt: str) -> np.ndarray:
        request = GenerationRequest(prompt=prompt, scheduler="ddim", **common)
        return np.asarray(engine.generate(request).images[0].convert("RGB"))

    return {"MultiDiffusion": md(False), "MultiDiffusion --fast": md(True),
            "one pass (regional attention)": md(False, attention=True),
            "text-to-image, background prompt": t2i(item.background),
            "text-to-image, full caption": t2i(item.caption)}


REGION_ROWS = ("MultiDiffusion", "MultiDiffusion --fast", "one pass (regional attention)",
               "text-to-image, background prompt",
               "text-to-image, full caption", "real painting (ceiling)")


def run_regions(engine: Engine, count: int, steps: int, seed: int, say: Say) -> dict[str, Any]:
    items = region_scenes(count)
    hits: dict[str, list[bool]] = {row: [] for row in REGION_ROWS}
    families: dict[str, list[bool]] = {row: [] for row in REGION_ROWS}
    by_kind: dict[str, dict[str, list[bool]]] = {}
    examples: list[dict[str, np.ndarray]] = []
    for n, item in enumerate(items):
        images = region_methods(engine, item, steps, seed)
        images["real painting (ceiling)"] = P.render_painting(item.scene, SIZE, item.style)
        for row, image in images.items():
            words = region_words(image, item)
            scored = score_words(words, item)
            hits[row] += scored
            families[row] += score_families(words, item)
            for (kind, _, _), ok in zip(item.regions, scored):
                by_kind.setdefault(kind, {r: [] for r in REGION_ROWS})[row].append(ok)
        if len(examples) < 4:
            examples.append({"map": region_map_image(item), **images})
        say(f"regions: scene {n + 1}/{len(items)}")
    accuracy = {row: float(np.mean(v)) for row, v in hits.items()}
    return {"scenes": [it.index for it in items], "regions": len(hits["MultiDiffusion"]),
            "accuracy": accuracy, "family_accuracy": {row: float(np.mean(v)) for row, v in families.items()},
            "by_kind": {k: {r: [int(np.sum(v)), len(v)] for r, v in rows.items()} for k, rows in by_kind.items()},
            "examples": examples,
            "prompts": [{"background": it.background, "regions": [p for _, p, _ in it.regions]} for it in items[:4]]}


def region_map_image(item: RegionScene) -> np.ndarray:
    out = np.full((SIZE, SIZE, 3), 255, np.uint8)
    for (_, _, mask), colour in zip(item.regions, item.colours):
        out[mask] = P.PALETTE[colour]
    return out


# ----------------------------------------------------------------------- composed methods

COMPOSED_ROWS = ("MultiDiffusion (region prompts)", "GradOP+ 0.50 (full caption)",
                 "GradOP+ 0.50 + region prompts", "GradOP+ fast 0.50 + region prompts")


def run_composed(engine: Engine, count: int, steps: int, seed: int, say: Say) -> dict[str, Any]:
    """GradOP+ with region prompts against each method alone, on the region scenes drawn as flat
    scribbles: region colour accuracy and faithfulness (MSE of the blurred output to the scribble)."""
    items = region_scenes(count)
    hits: dict[str, list[bool]] = {row: [] for row in COMPOSED_ROWS}
    mse: dict[str, list[float]] = {row: [] for row in COMPOSED_ROWS}
    seconds: dict[str, float] = {row: 0.0 for row in COMPOSED_ROWS}
    examples: list[dict[str, np.ndarray]] = []
    for n, item in enumerate(items):
        regions = tuple(Region(mask=Image.fromarray(mask.astype(np.uint8) * 255), prompt=prompt, name=kind)
                        for kind, prompt, mask in item.regions)
        flat = P.render_scribble(item.scene, SIZE)
        scribble = Image.fromarray(flat)
        common = dict(steps=steps, seed=seed, scheduler="ddim")
        requests = {
            "MultiDiffusion (region prompts)": MultiDiffusionRequest(prompt=item.background, regions=regions,
                                                                     width=SIZE, height=SIZE, **common),
            "GradOP+ 0.50 (full caption)": stroke_request(item.caption, scribble, fidelity=0.5, **common),
            "GradOP+ 0.50 + region prompts": stroke_request(item.background, scribble, fidelity=0.5,
                                                            regions=regions, **common),
            "GradOP+ fast 0.50 + region prompts": stroke_request(item.background, scribble, fidelity=0.5,
                                                                 regions=regions, fast=True, **common),
        }
        reference = stroke_request(item.caption, scribble, **common)
        images: dict[str, np.ndarray] = {}
        for row, request in requests.items():
            start = time.perf_counter()
            out = engine.run(request).images
            seconds[row] += time.perf_counter() - start
            images[row] = np.asarray(out[0].convert("RGB"))
            hits[row] += score_regions(images[row], item)
            mse[row].append(faithfulness(out, reference)[0])
        if len(examples) < 4:
            examples.append({"map": flat, **images})
        say(f"composed: scene {n + 1}/{len(items)}")
    rows = {row: {"region_colour_accuracy": float(np.mean(hits[row])), "faithfulness": float(np.mean(mse[row])),
                  "seconds_per_image": seconds[row] / len(items)} for row in COMPOSED_ROWS}
    return {"scenes": len(items), "regions": len(hits[COMPOSED_ROWS[0]]), "rows": rows, "examples": examples}


# ------------------------------------------------------------------------------- the VAE

def run_vae(engine: Engine, count: int, say: Say) -> dict[str, Any]:
    """Can the model's autoencoder carry the colours at all? Region colour accuracy (as above)
    of the held-out region scenes' flat scribbles and paintings, before and after a round trip
    through the VAE (encode, decode: what every generated image passes through), and PSNR."""
    items = region_scenes(count)
    hits: dict[str, list[bool]] = {k: [] for k in VAE_ROWS}
    values: dict[str, list[float]] = {"scribble": [], "painting": []}
    for n, item in enumerate(items):
        flat = P.render_scribble(item.scene, SIZE)
        painting = P.render_painting(item.scene, SIZE, item.style)
        trips = E.vae_round_trip(engine, np.stack([flat, painting]))
        for key, image in (("flat scribble", flat), ("flat scribble after VAE round trip", trips[0]),
                           ("painting", painting), ("painting after VAE round trip", trips[1])):
            hits[key] += score_regions(image, item)
        values["scribble"].append(psnr(flat, trips[0]))
        values["painting"].append(psnr(painting, trips[1]))
        say(f"vae: scene {n + 1}/{len(items)}")
    return {"scenes": len(items), "regions": len(hits["painting"]),
            "accuracy": {k: float(np.mean(v)) for k, v in hits.items()},
            "psnr": {k: float(np.mean(v)) for k, v in values.items()}}


VAE_ROWS = ("flat scribble", "flat scribble after VAE round trip", "painting", "painting after VAE round trip")


# -------------------------------------------------------------------------------- stroke

PANORAMA_MODES = ("sliding (exact, stride window/8)", "shifted (SpotDiffusion, random)")


def run_panorama(engine: Engine, count: int, steps: int, seed: int, net: E.AttributeNet, real: np.ndarray,
                 say: Say) -> dict[str, Any]:
    """Realism and seams of each window mode on ``count`` held-out captions (see the module docstring)."""
    from bench.bench_regions import seam_request, seam_score

    native = engine.bundle.native_size
    crops: dict[str, list[np.ndarray]] = {m: [] for m in PANORAMA_MODES + ("text-to-image",)}
    seams: dict[str, list[float]] = {m: [] for m in PANORAMA_MODES}
    seconds: dict[str, float] = {m: 0.0 for m in crops}
    for i in range(count):
        _, _, caption = item_scene(HELDOUT_SEED, 3000 + i)
        for mode in PANORAMA_MODES:
            request = seam_request(engine, mode, caption, seed + i, steps)
            start = time.perf_counter()
            image = engine.run(request).images[0]
            seconds[mode] += time.perf_counter() - start
            seams[mode].append(seam_score(engine, request, image))
            pixels = np.asarray(image.convert("RGB"))
            pieces = [pixels[:, x:x + native] for x in range(0, pixels.shape[1], native)]
            crops[mode] += pieces
        start = time.perf_counter()  # as many text-to-image pictures as a panorama gives crops (the
        # Frechet distance's bias depends on the sample count): seeds 1000 * (seed + i) + k
        t2i = engine.generate(GenerationRequest(prompt=caption, negative_prompt="", width=native, height=native,
                                                steps=steps, seed=1000 * (seed + i), num_images=len(pieces),
                                                scheduler="ddim"))
        seconds["text-to-image"] += time.perf_counter() - start
        crops["text-to-image"] += [np.asarray(im.convert("RGB")) for im in t2i.images]
        say(f"panorama: caption {i + 1}/{count}")
    real_features = classifier_features(net, real)
    rows = {}
    for mode, images in crops.items():
        rows[mode] = {"frechet": frechet_distance(classifier_features(net, np.stack(images)), real_features),
                      "images": len(images), "seconds_per_image": seconds[mode] / count}
        if mode in seams:
            rows[mode]["seam_score"] = float(np.mean(seams[mode]))
            rows[mode]["seam_score_max"] = float(np.max(seams[mode]))
    return {"captions": count, "canvas_px": [4 * native, native], "rows": rows}


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) of two feature sets (N, D)
    (Heusel et al. 2017); the matrix square root through symmetric eigendecompositions."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(s_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.linalg.eigvalsh(root_a @ s_b @ root_a)
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(s_a) + np.trace(s_b) - 2 * np.sum(np.sqrt(np.clip(cross, 0, None))))


@torch.no_grad()
def classifier_features(net: E.AttributeNet, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """The classifier's pooled last-block features (global mean and max), (N, 256)."""
    out = []
    for start in range(0, len(images), batch_size):
        f = net.features(E.to_input(images[start:start + batch_size], net.input_size))
        out.append(torch.cat([f.mean((2, 3)), f.amax((2, 3))], 1).numpy())
    return np.concatenate(out).astype(np.float64)


def stroke_settings(tiny: bool = False) -> dict[str, dict[str, Any]]:
    """Name -> stroke_request arguments of every point of the sweep (``tiny``: also GradOP+ fast
    through the model's tiny decoder; "GradOP+ fast" is the linear latent -> RGB map)."""
    settings: dict[str, dict[str, Any]] = {"text-to-image": {}}
    for s in SDEDIT_STRENGTHS:
        settings[f"SDEdit {s:.1f}"] = {"method": "sdedit", "strength": s}
    for f in GRADOP_PLUS_FIDELITIES:
        settings[f"GradOP+ {f:.2f}"] = {"method": "gradop+", "fidelity": f}
    for f in FAST_FIDELITIES:
        settings[f"GradOP+ fast {f:.2f}"] = {"method": "gradop+", "fidelity": f, "fast": True, "renderer": "linear"}
        if tiny:
            settings[f"GradOP+ fast tiny {f:.2f}"] = {"method": "gradop+", "fidelity": f, "fast": True,
                                                      "renderer": "tiny"}
    settings["GradOP 0.50"] = {"method": "gradop", "fidelity": 0.5}
    return settings


def curve_of(name: str) -> str:
    return name.rsplit(" ", 1)[0] if name != "text-to-image" else name


def run_stroke(engine: Engine, count: int, steps: int, seed: int, net: E.AttributeNet, real: np.ndarray,
               say: Say, only: set[str] | None = None) -> dict[str, Any]:
    from core.tiny_decoder import tiny_decoder

    settings = stroke_settings(tiny=tiny_decoder(engine.bundle)[0] is not None)
    if only:
        unknown = only - set(settings)
        if unknown:
            raise SystemExit(f"--stroke-settings: unknown {', '.join(sorted(unknown))}; known: {', '.join(settings)}")
        settings = {k: v for k, v in settings.items() if k in only}
    images: dict[str, list[np.ndarray]] = {k: [] for k in settings}
    mse: dict[str, list[float]] = {k: [] for k in settings}
    styles: list[int] = []
    seconds: dict[str, float] = {k: 0.0 for k in settings}
    for i in range(count):
        scene, style, text = item_scene(HELDOUT_SEED, 1000 + i)
        styles.append(P.STYLES.index(style))
        scribble = Image.fromarray(P.render_scribble(scene, SIZE))
        reference = stroke_request(text, scribble, steps=steps, seed=seed)
        for name, args in settings.items():
            start = time.perf_counter()
            if name == "text-to-image":
                out = engine.generate(GenerationRequest(prompt=text, steps=steps, seed=seed, scheduler="ddim",
                                                        width=SIZE, height=SIZE)).images
            else:
                out = engine.run(stroke_request(text, scribble, steps=steps, seed=seed, **args)).images
            seconds[name] += time.perf_counter() - start
            mse[name].append(faithfulness(out, reference)[0])
            images[name].append(np.asarray(out[0].convert("RGB")))
        say(f"stroke: scene {i + 1}/{count}")
    real_features = classifier_features(net, real)
    rows = {}
    for name in settings:
        stack = np.stack(images[name])
        predicted = E.predict(net, stack)
        rows[name] = {"faithfulness": float(np.mean(mse[name])),
                      "frechet": frechet_distance(classifier_features(net, stack), real_features),
                      "style_accuracy": float(np.mean(predicted["style"] == np.array(styles))),
                      "seconds_per_image": seconds[name] / count}
    return {"rows": rows, "examples": {k: v[:3] for k, v in images.items()}, "scenes": count}


def crossings(rows: dict[str, dict[str, float]], curve: str, faith: float) -> float | None:
    """The Frechet distance of ``curve`` linearly interpolated at faithfulness ``faith``, or None
    when the curve does not reach it."""
    pts = sorted((r["faithfulness"], r["frechet"]) for n, r in rows.items() if curve_of(n) == curve)
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if min(x0, x1) <= faith <= max(x0, x1):
            return y0 if x1 == x0 else y0 + (y1 - y0) * (faith - x0) / (x1 - x0)
    return None


def stroke_claims(rows: dict[str, dict[str, float]]) -> dict[str, Any]:
    """The paper's claim checked at every SDEdit point GradOP+'s curve reaches: GradOP+'s distance
    there is lower; and GradOP+ at fidelity 1 is at least as faithful as SDEdit 0.6."""
    compared = []
    for name, r in rows.items():
        if curve_of(name) == "SDEdit":
            ours = crossings(rows, "GradOP+", r["faithfulness"])
            if ours is not None:
                compared.append({"sdedit": name, "faithfulness": r["faithfulness"], "sdedit_frechet": r["frechet"],
                                 "gradop_plus_frechet": ours, "gradop_plus_lower": ours < r["frechet"]})
    both = "GradOP+ 1.00" in rows and "SDEdit 0.6" in rows
    return {"compared": compared,
            "below_sdedit": bool(compared) and all(c["gradop_plus_lower"] for c in compared),
            "fidelity1_as_faithful_as_sdedit06":
                rows["GradOP+ 1.00"]["faithfulness"] <= rows["SDEdit 0.6"]["faithfulness"] if both else None,
            "tiny_decoder": tiny_decoder_claims(rows)}


def tiny_decoder_claims(rows: dict[str, dict[str, float]]) -> dict[str, Any] | None:
    """Issue 15's targets for GradOP+ fast through the tiny decoder at fidelity 0.5: at most 1.25x
    the time of text-to-image, and faithfulness and Frechet distance within 10% of full GradOP+."""
    fast, full, t2i = rows.get("GradOP+ fast tiny 0.50"), rows.get("GradOP+ 0.50"), rows.get("text-to-image")
    if not (fast and full and t2i):
        return None
    return {"cost_vs_text_to_image": fast["seconds_per_image"] / t2i["seconds_per_image"],
            "faithfulness_vs_gradop_plus": fast["faithfulness"] / full["faithfulness"],
            "frechet_vs_gradop_plus": fast["frechet"] / full["frechet"]}


def plot_stroke(rows: dict[str, dict[str, float]], path: Any, title: str) -> None:
    """Realism (Frechet distance, lower is better) against faithfulness (MSE, lower is closer),
    one polyline per method, drawn with PIL (no plotting dependency)."""
    w, h, m = 760, 520, 70
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    xs = [r["faithfulness"] for r in rows.values()]
    ys = [r["frechet"] for r in rows.values()]
    x_lo, x_hi = min(xs) * 0.9, max(xs) * 1.05
    y_lo, y_hi = min(ys) * 0.9, max(ys) * 1.05

    def at(x: float, y: float) -> tuple[float, float]:
        return m + (x - x_lo) / (x_hi - x_lo) * (w - 2 * m), h - m - (y - y_lo) / (y_hi - y_lo) * (h - 2 * m)

    d.rectangle([m, m, w - m, h - m], outline="black")
    for k in range(5):
        xv, yv = x_lo + (x_hi - x_lo) * k / 4, y_lo + (y_hi - y_lo) * k / 4
        px, py = at(xv, yv)
        d.text((px - 18, h - m + 6), f"{xv:.3f}", fill="black")
        d.text((8, py - 6), f"{yv:.2f}", fill="black")
    d.text((w // 2 - 150, h - 28), "faithfulness: MSE(blurred output, scribble), lower = closer", fill="black")
    d.text((m, 10), title, fill="black")
    d.text((m, 26), "realism: Frechet distance to real held-out paintings, lower = more realistic", fill="black")
    colours = {"SDEdit": (200, 60, 40), "GradOP+": (40, 90, 200), "GradOP+ fast": (40, 160, 90),
               "GradOP+ fast tiny": (230, 150, 20),
               "GradOP": (150, 60, 170), "text-to-image": (0, 0, 0)}
    legend_y = m + 8
    for curve, colour in colours.items():
        pts = sorted((r["faithfulness"], r["frechet"], n) for n, r in rows.items() if curve_of(n) == curve)
        if not pts:
            continue
        coords = [at(x, y) for x, y, _ in pts]
        if len(coords) > 1:
            d.line(coords, fill=colour, width=2)
        for (x, y), (_, _, name) in zip(coords, pts):
            d.ellipse([x - 4, y - 4, x + 4, y + 4], fill=colour)
            d.text((x + 6, y - 12), name.rsplit(" ", 1)[-1] if curve != "text-to-image" else "t2i", fill=colour)
        d.line([w - m - 150, legend_y + 6, w - m - 130, legend_y + 6], fill=colour, width=3)
        d.text((w - m - 124, legend_y), curve, fill=colour)
        legend_y += 16
    img.save(path)


# ------------------------------------------------------------------------------ reports

def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# Quality bench: `{report['model']}`", "",
             f"`{report['command']}`: {report['seconds']:.0f} s on {report['threads']} CPU threads; {SIZE}x{SIZE}, "
             f"DDIM {report['steps']} steps, CFG 7.5, seed {report['seed']}; held-out scenes of dataset seed "
             f"{HELDOUT_SEED}."]
    lines += [f"Parts kept from an earlier run: `{c}`." for c in report.get("earlier_commands", [])] + [""]
    if "regions" in report:
        r = report["regions"]
        acc = r["accuracy"]
        base = acc["text-to-image, background prompt"]
        lines += ["## Region prompts (MultiDiffusion)", "",
                  f"{len(r['scenes'])} daytime scenes, {r['regions']} scored regions (each at least "
                  f"{MIN_REGION:.0%} of the picture). A region is right when the mean colour inside its mask is "
                  f"nearest in Lab to its named colour among the grammar's {len(COLOUR_WORDS)} colour words "
                  "(the issue's measure). Colour family, a looser measure beside it: that nearest word is a shade "
                  "of the same colour of the app's palette as the named one (\"dark red\" for \"red\", "
                  "\"navy\" for \"blue\").", "",
                  "| method | region colour accuracy | colour family |", "|---|---|---|"]
        fam = r.get("family_accuracy", {})
        lines += [f"| {row} | {_pct(acc[row])} | {_pct(fam[row]) if row in fam else ''} |"
                  for row in REGION_ROWS if row in acc]
        md = acc["MultiDiffusion"]
        lines += ["", f"Targets: exact MultiDiffusion at least 75%: **{'met' if md >= 0.75 else 'not met'}** "
                  f"({_pct(md)}); at least twice the background-only baseline ({_pct(2 * base)}): "
                  f"**{'met' if md >= 2 * base and md > base else 'not met'}**.", "", "Per kind (exact MultiDiffusion, right / scored):",
                  "", "| kind | MultiDiffusion | background only | real painting |", "|---|---|---|---|"]
        for kind, rows in sorted(r["by_kind"].items()):
            cells = [f"{rows[k][0]}/{rows[k][1]}" for k in ("MultiDiffusion", "text-to-image, background prompt",
                                                            "real painting (ceiling)")]
            lines.append(f"| {kind} | " + " | ".join(cells) + " |")
        lines.append("")
    if "vae" in report:
        v = report["vae"]
        lines += ["## The autoencoder: can it carry the colours?", "",
                  f"The same {v['scenes']} scenes ({v['regions']} regions): region colour accuracy of the flat scribble "
                  "and of the painting, before and after a round trip through the model's VAE (every generated image "
                  "is a VAE decoding), and the round trip's PSNR.", "",
                  "| image | region colour accuracy | round-trip PSNR |", "|---|---|---|"]
        for row in VAE_ROWS:
            key = "scribble" if row.startswith("flat") else "painting"
            cell = f"{v['psnr'][key]:.1f} dB" if "after" in row else ""
            lines.append(f"| {row} | {_pct(v['accuracy'][row])} | {cell} |")
        lines.append("")
    if "composed" in report:
        c = report["composed"]
        lines += ["## Composed: GradOP+ with region prompts", "",
                  f"The region scenes drawn as flat scribbles ({c['scenes']} scenes, {c['regions']} regions), each "
                  "region prompted as above, the sky as background prompt. Region colour accuracy as above; "
                  "faithfulness: MSE(blurred output, scribble), lower is closer.", "",
                  f"![composed examples]({report['name']}-composed.png)", "",
                  "| method | region colour accuracy | faithfulness | s / image |", "|---|---|---|---|"]
        for row, v in c["rows"].items():
            lines.append(f"| {row} | {_pct(v['region_colour_accuracy'])} | {v['faithfulness']:.4f} | "
                         f"{v['seconds_per_image']:.2f} |")
        lines.append("")
    if "stroke" in report:
        s = report["stroke"]
        rows = s["rows"]
        c = s["claims"]
        lines += ["## Stroke guidance (GradOP / GradOP+)", "",
                  f"{s['scenes']} held-out flat scribbles with their captions. Faithfulness: MSE(blurred output, "
                  "scribble), lower is closer. Realism: Frechet distance to "
                  f"{report['real_count']} real held-out paintings in the attribute classifier's pooled last-block "
                  "features (256-d), lower is more realistic; style accuracy by the same classifier.", "",
                  f"![realism against faithfulness]({report['name']}-stroke.png)", "",
                  "| setting | faithfulness | Frechet distance | style accuracy | s / image |", "|---|---|---|---|---|"]
        for name, row in rows.items():
            lines.append(f"| {name} | {row['faithfulness']:.4f} | {row['frechet']:.2f} | "
                         f"{_pct(row['style_accuracy'])} | {row['seconds_per_image']:.2f} |")
        lines += ["", "The paper's claim, at each SDEdit point the GradOP+ curve reaches (interpolated):", ""]
        for cmp in c["compared"]:
            lines.append(f"- {cmp['sdedit']} (faithfulness {cmp['faithfulness']:.4f}): SDEdit "
                         f"{cmp['sdedit_frechet']:.2f}, GradOP+ {cmp['gradop_plus_frechet']:.2f}: "
                         f"{'GradOP+ lower' if cmp['gradop_plus_lower'] else 'GradOP+ NOT lower'}")
        if not c["compared"]:
            lines.append("- the GradOP+ curve reaches no SDEdit point's faithfulness: the curves do not overlap")
        f1 = c["fidelity1_as_faithful_as_sdedit06"]
        below = "n/a" if not any(curve_of(n) == "SDEdit" for n in rows) else "met" if c["below_sdedit"] else "not met"
        lines += ["", f"GradOP+ curve below SDEdit's: **{below}**; fidelity 1.0 "
                  f"at least as faithful as SDEdit 0.6: **{'n/a' if f1 is None else 'met' if f1 else 'not met'}**.",
                  ""]
        tiny = c.get("tiny_decoder")
        if tiny:
            ok = (tiny["cost_vs_text_to_image"] <= 1.25, tiny["faithfulness_vs_gradop_plus"] <= 1.1,
                  tiny["frechet_vs_gradop_plus"] <= 1.1)
            lines += [f"GradOP+ fast through the tiny decoder (fidelity 0.5): {tiny['cost_vs_text_to_image']:.2f}x "
                      f"the time of text-to-image (target at most 1.25x: **{'met' if ok[0] else 'not met'}**); "
                      f"its faithfulness MSE {tiny['faithfulness_vs_gradop_plus']:.2f}x and Frechet distance "
                      f"{tiny['frechet_vs_gradop_plus']:.2f}x full-decoder GradOP+'s (target within 10%: "
                      f"**{'met' if ok[1] and ok[2] else 'not met'}**).", ""]
    if "panorama" in report:
        pano = report["panorama"]
        lines += ["## Panoramas: sliding against shifted windows", "",
                  f"{pano['captions']} held-out captions, {pano['canvas_px'][0]}x{pano['canvas_px'][1]} px panoramas "
                  "(4 windows wide) cut into native-size crops. Realism: Frechet distance of those crops to "
                  f"{report['real_count']} real held-out paintings in the attribute classifier's features (lower "
                  "is more realistic; text-to-image of the same captions for comparison, as many pictures as "
                  "crops, since the distance's bias grows as the sample shrinks). Seam score: the mean "
                  "colour jump between pixel columns at window borders over that of the whole image (1.0 = no "
                  "seam).", "", "| windows | Frechet distance (crops) | seam score (mean) | worst | s per caption |",
                  "|---|---|---|---|---|"]
        for mode, row in pano["rows"].items():
            seam = f"{row['seam_score']:.2f} | {row['seam_score_max']:.2f}" if "seam_score" in row else " | "
            lines.append(f"| {mode} | {row['frechet']:.2f} ({row['images']}) | {seam} | {row['seconds_per_image']:.1f} |")
        lines.append("")
    if "text" in report:
        lines += ["## Text (training.eval's rows)", "", "| images | style | time of day | objects |", "|---|---|---|---|"]
        for row in report["text"]["rows"]:
            lines.append(f"| {row['name']} | {_pct(row['style'])} | {_pct(row['time'])} | {_pct(row['objects'])} |")
        lines.append("")
    return "\n".join(lines)


def example_grid(report: dict[str, Any], path: Any) -> None:
    """Region examples: the map, then each method's image, one scene a row."""
    rows = []
    for ex in report["regions"]["examples"]:
        rows.append(np.concatenate([ex["map"]] + [ex[k] for k in REGION_ROWS if k in ex], 1))
    if rows:
        Image.fromarray(np.concatenate(rows, 0)).save(path)


def attribute_classifier(engine: Engine, config: E.EvalConfig, say: Say) -> E.AttributeNet:
    """The attribute classifier of ``training.eval``, trained on real paintings and their VAE
    round trips (so decoded pictures are judged like paintings)."""
    train_x, train_y, _ = E.render_set(config.train_data_seed, config.train_count, SIZE, config.input_size)
    full, _, _ = E.render_set(config.train_data_seed, config.vae_train_count, SIZE)
    train_x = np.concatenate([train_x, E.resize(E.vae_round_trip(engine, full), config.input_size)])
    train_y = {k: np.concatenate([v, v[:config.vae_train_count]]) for k, v in train_y.items()}
    return E.train_classifier(train_x, train_y, config.epochs, config.seed, config.input_size, progress=say)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model folder or name (default: the bundled demo model)")
    parser.add_argument("--scenes", type=int, default=50, help="region scenes")
    parser.add_argument("--stroke-scenes", type=int, default=50, help="stroke scenes")
    parser.add_argument("--panoramas", type=int, default=12, help="panorama captions per window mode")
    parser.add_argument("--text-count", type=int, default=100, help="held-out captions for the text rows")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--parts", default=",".join(PARTS),
                        help="what to measure; parts not run keep their figures from an earlier run of the same model")
    parser.add_argument("--classifier-count", type=int, default=2000, help="classifier training images")
    parser.add_argument("--real-count", type=int, default=200, help="real held-out paintings for the distance")
    parser.add_argument("--name", default="quality")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--stroke-settings", help="comma-separated stroke rows to run (default: the whole sweep), "
                                                  "e.g. 'text-to-image,GradOP+ 0.50,GradOP+ fast tiny 0.50'")
    args = parser.parse_args(argv)
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if not parts <= set(PARTS):
        parser.error("--parts takes " + ", ".join(PARTS))
    torch.set_num_threads(args.threads)
    say: Say = E._stderr
    t0 = time.perf_counter()
    engine = Engine.load(LoadOptions(model=args.model, device="cpu"))
    report: dict[str, Any] = {"model": engine.bundle.location, "steps": args.steps, "seed": args.seed,
                              "threads": args.threads, "name": args.name, "real_count": args.real_count,
                              "command": "python -m bench.bench_quality " + " ".join(argv or __import__("sys").argv[1:])}
    if "regions" in parts:
        report["regions"] = run_regions(engine, args.scenes, args.steps, args.seed, say)
    if "vae" in parts:
        report["vae"] = run_vae(engine, args.scenes, say)
    if "composed" in parts:
        report["composed"] = run_composed(engine, args.scenes, args.steps, args.seed, say)
    if parts & {"stroke", "panorama", "text"}:
        config = E.EvalConfig(model=args.model, count=args.text_count, train_count=args.classifier_count,
                              vae_train_count=min(400, args.classifier_count // 5), steps=args.steps, seed=args.seed)
        net = attribute_classifier(engine, config, say)
        real, _, _ = E.render_set(HELDOUT_SEED, args.real_count, SIZE)
        if "panorama" in parts:
            report["panorama"] = run_panorama(engine, args.panoramas, args.steps, args.seed, net, real, say)
        if "stroke" in parts:
            only = {n.strip() for n in args.stroke_settings.split(",") if n.strip()} if args.stroke_settings else None
            stroke = run_stroke(engine, args.stroke_scenes, args.steps, args.seed, net, real, say, only)
            stroke["claims"] = stroke_claims(stroke["rows"])
            report["stroke"] = stroke
        if "text" in parts:
            real_x, real_y, captions = E.render_set(config.heldout_data_seed, config.count, SIZE)
            gen_x, _ = E.generate_set(engine, captions, SIZE, config.steps, config.guidance, config.seed, say)
            report["text"] = {"rows": [{"name": n, **E.evaluate(net, x, real_y)} for n, x in
                                       (("real held-out", real_x), ("generated from held-out captions", gen_x))]}
    report["seconds"] = time.perf_counter() - t0
    say("done\n")
    RESULTS.mkdir(exist_ok=True)
    if "stroke" in parts:
        plot_stroke(report["stroke"]["rows"], RESULTS / f"{args.name}-stroke.png", f"Stroke guidance on {engine.bundle.name}")
    if "regions" in parts:
        example_grid(report, RESULTS / f"{args.name}-regions.png")
    if "composed" in parts:
        rows = [np.concatenate([ex["map"]] + [ex[k] for k in COMPOSED_ROWS], 1) for ex in report["composed"]["examples"]]
        Image.fromarray(np.concatenate(rows, 0)).save(RESULTS / f"{args.name}-composed.png")
    earlier = RESULTS / f"{args.name}.json"
    if earlier.is_file():  # keep the parts not run now, when they measured the same model
        old = json.loads(earlier.read_text())
        if old.get("model") == report["model"]:
            for part in PARTS:
                if part not in parts and part in old:
                    report[part] = old[part]
                    command = old.get("part_commands", {}).get(part, old.get("command"))
                    report.setdefault("part_commands", {})[part] = command
                    if command not in report.setdefault("earlier_commands", []):
                        report["earlier_commands"].append(command)
    table = markdown(report)
    data = {k: v for k, v in report.items() if k not in ("regions", "stroke", "composed")}
    if "composed" in report:
        data["composed"] = {k: v for k, v in report["composed"].items() if k != "examples"}
    if "regions" in report:
        data["regions"] = {k: v for k, v in report["regions"].items() if k != "examples"}
    if "stroke" in report:
        data["stroke"] = {k: v for k, v in report["stroke"].items() if k != "examples"}
    write_results(args.name, data, table)
    print(table)


if __name__ == "__main__":
    main()
