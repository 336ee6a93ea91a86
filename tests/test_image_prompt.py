"""Image prompts (MGAD CLIP guidance): mechanics on the tiny model with a tiny CLIP built here,
the guidance's math, recipes, the CLI and bad input."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.cli import main as cli_main
from core.clip_model import load_clip, resolve_clip
from core.errors import StudioError
from core.image_prompt import ClipGuidance, ImageGuidance, ImagePrompt, Target, cutout_boxes, spherical_distance
from core.outputs import replay, save_result
from core.panorama import MultiDiffusionRequest
from core.region_map import Region, parse_prompt_table
from core.requests import GenerationRequest
from core.schedulers import make_scheduler
from core.stroke_guidance import stroke_request
from training.clip import build_tiny_clip


@pytest.fixture(scope="module")
def tiny_clip(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip", tiny_model_dir / "tokenizer")


def reference(colour=(200, 40, 40), size=64) -> Image.Image:
    rng = np.random.default_rng(sum(colour))
    pixels = np.clip(np.array(colour)[None, None] + rng.normal(0, 30, (size, size, 3)), 0, 255)
    return Image.fromarray(pixels.astype(np.uint8))


def guidance(clip: Path, **kw) -> ImageGuidance:
    return ImageGuidance(prompts=(ImagePrompt(reference(), 1.0),), clip_model=str(clip), **kw)


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0], dtype=np.int16)


def test_spherical_distance_is_half_the_squared_angle():
    a = torch.tensor([[1.0, 0.0]])
    for angle in (0.0, 0.3, 1.0, np.pi):
        b = torch.tensor([[np.cos(angle), np.sin(angle)]], dtype=torch.float32)
        assert float(spherical_distance(a, b)) == pytest.approx(angle**2 / 2, abs=1e-5)


def test_cutouts_stay_inside_the_box_and_span_40_to_100_percent():
    g = torch.Generator().manual_seed(0)
    boxes = cutout_boxes(40, 100, 200, 1.0, g, box=(10, 20, 30, 60))
    for top, left, side in boxes:
        assert 10 <= top and top + side <= 30 and 20 <= left and left + side <= 60
        assert 8 <= side <= 20
    assert max(s for _, _, s in boxes) == 20 and min(s for _, _, s in boxes) <= 9


def test_the_guided_eps_moves_x0_down_the_clip_loss(tiny_clip: Path):
    """eps' = eps + s sqrt(1 - abar) g/|g|: the x0 it implies has a lower loss (fixed cutouts)."""
    guide = load_clip(str(tiny_clip))
    scheduler = make_scheduler("ddim", {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                                        "beta_schedule": "scaled_linear"}, steps=10)
    target = Target(guide.image_features(torch.rand(1, 3, 16, 16)), torch.tensor([1.0]))
    render = lambda z: torch.sigmoid(z[:, :3])  # noqa: E731  (a smooth renderer: no clamp)
    settings = ImageGuidance(scale=0.05, clip_model=str(tiny_clip), cutouts=4, end=1.0)
    wrap = ClipGuidance(guide, render, 1, settings, target, scheduler, seed=0)
    z = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    t = scheduler.timesteps[3]
    abar = scheduler.alphas_cumprod[int(t)]
    eps0 = torch.zeros_like(z)
    eps = wrap(lambda z_, t_: eps0)(z, t)
    assert not torch.equal(eps, eps0)

    def loss(e):
        x0 = (z - (1 - abar).sqrt() * e) / abar.sqrt()
        return float(wrap.loss(render(x0), torch.Generator().manual_seed(0)))

    assert loss(eps) < loss(eps0)


def test_a_region_prompt_changes_eps_only_inside_its_mask(tiny_clip: Path):
    guide = load_clip(str(tiny_clip))
    scheduler = make_scheduler("ddim", {"num_train_timesteps": 1000}, steps=10)
    mask = torch.zeros(16, 16)
    mask[4:10, 2:12] = 1
    target = Target(guide.image_features(torch.rand(1, 3, 16, 16)), torch.tensor([1.0]), box=(4, 2, 10, 12),
                    mask=mask)
    wrap = ClipGuidance(guide, lambda z: torch.sigmoid(z[:, :3]), 1, ImageGuidance(clip_model=str(tiny_clip)),
                        target, scheduler, seed=0)
    z = torch.randn(2, 4, 16, 16)
    eps = wrap(lambda z_, t_: torch.zeros_like(z_))(z, scheduler.timesteps[0])
    assert float(eps[:, :, mask == 0].abs().max()) == 0
    assert float(eps[:, :, mask == 1].abs().max()) > 0


def test_guidance_acts_only_in_its_part_of_the_schedule(tiny_clip: Path):
    scheduler = make_scheduler("ddim", {"num_train_timesteps": 1000}, steps=10)
    wrap = ClipGuidance(load_clip(str(tiny_clip)), lambda z: torch.sigmoid(z[:, :3]), 1,
                        ImageGuidance(clip_model=str(tiny_clip), start=0.2, end=0.5),
                        Target(torch.zeros(1, 16), torch.ones(1)), scheduler, seed=0)
    active = [wrap.active(t) for t in scheduler.timesteps]
    assert active == [False, False, True, True, True, False, False, False, False, False]


def test_neutral_image_guidance_equals_text_to_image_bit_exactly(tiny_engine, tiny_clip: Path):
    plain = tiny_engine.run(GenerationRequest("a red square", steps=4, seed=5))
    for neutral in (guidance(tiny_clip, scale=0.0),
                    ImageGuidance(prompts=(ImagePrompt(reference(), 0.0),), clip_model=str(tiny_clip)),
                    ImageGuidance(clip_model=str(tiny_clip))):
        other = tiny_engine.run(GenerationRequest("a red square", steps=4, seed=5, image_guidance=neutral))
        assert torch.equal(plain.latents, other.latents)


def test_an_image_prompt_changes_txt2img_regions_stroke_and_panorama(tiny_engine, tiny_clip: Path):
    g = guidance(tiny_clip, scale=4.0)
    strokes = Image.new("RGB", (64, 64), (40, 90, 200))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    requests = [
        lambda ig: GenerationRequest("a red square", steps=4, seed=5, image_guidance=ig),
        lambda ig: MultiDiffusionRequest("a field", regions=(Region(mask, "a sun"),), steps=4, seed=5,
                                         image_guidance=ig),
        lambda ig: MultiDiffusionRequest("a wide field", kind="panorama", width=128, height=64, window=8, stride=4,
                                         steps=3, seed=5, image_guidance=ig),
        lambda ig: stroke_request("a lake", strokes, steps=6, seed=5, fast=True, image_guidance=ig),
    ]
    for make in requests:
        plain, guided = tiny_engine.run(make(None)), tiny_engine.run(make(g))
        assert not torch.equal(plain.latents, guided.latents), type(make(None)).__name__


def test_a_region_image_prompt_acts_inside_its_region(tiny_engine, tiny_clip: Path):
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (40, 16, 64, 48))  # away from the corner: the cutouts' box must be found at latent scale
    settings = ImageGuidance(clip_model=str(tiny_clip), scale=4.0)
    plain = tiny_engine.run(MultiDiffusionRequest("a field", regions=(Region(mask, "a sun"),), steps=4, seed=5,
                                                  image_guidance=settings))
    guided = tiny_engine.run(MultiDiffusionRequest(
        "a field", regions=(Region(mask, "a sun", image_prompt=ImagePrompt(reference())),), steps=4, seed=5,
        image_guidance=settings))
    diff = (plain.latents - guided.latents).abs()[0].sum(0)
    inside = torch.zeros(8, 8, dtype=torch.bool)
    inside[2:6, 5:8] = True
    assert float(diff[inside].mean()) > 0  # the region was steered
    # outside, only the fusion's coupling through the UNet moves it: far less than inside
    assert float(diff[~inside].mean()) < float(diff[inside].mean())


def test_recipes_embed_the_image_prompts_and_replay_bit_exactly(tiny_engine, tiny_clip: Path, tmp_path: Path):
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    request = MultiDiffusionRequest(
        "a field", regions=(Region(mask, "a sun", image_prompt=ImagePrompt(reference((20, 200, 40)), 2.0)),),
        steps=4, seed=9, image_guidance=guidance(tiny_clip, scale=3.0, cutouts=4))
    result = tiny_engine.run(request)
    path = save_result(result, tiny_engine.bundle, tmp_path / "ip.png")[0]
    image, again, _ = replay(path)
    assert np.array_equal(pixels(result), np.asarray(image, dtype=np.int16))
    assert again.request.image_guidance.prompts[0].image.tobytes() == reference().tobytes()
    assert again.request.regions[0].image_prompt.weight == 2.0


def test_cli_image_prompts_and_prompts_file_images(tiny_model_dir: Path, tiny_clip: Path, tmp_path: Path, capsys):
    reference().save(tmp_path / "ref.png")
    reference((30, 200, 60)).save(tmp_path / "green.png")
    out = tmp_path / "t.png"
    code = cli_main(["txt2img", "--model", str(tiny_model_dir), "--prompt", "a square", "--steps", "3",
                     "--seed", "1", "--image-prompt", f"{tmp_path / 'ref.png'}:0.5", "--clip-model", str(tiny_clip),
                     "--out", str(out), "--quiet"])
    assert code == 0 and out.exists()
    regions = Image.new("RGB", (64, 64), (255, 255, 255))
    regions.paste((255, 0, 0), (0, 0, 32, 64))
    regions.save(tmp_path / "map.png")
    (tmp_path / "prompts.json").write_text(json.dumps({"#ff0000": {"prompt": "", "image": "green.png",
                                                                   "image_weight": 2}}))
    code = cli_main(["regions", "--model", str(tiny_model_dir), "--regions", str(tmp_path / "map.png"),
                     "--prompts", str(tmp_path / "prompts.json"), "--background-prompt", "a field", "--steps", "3",
                     "--clip-model", str(tiny_clip), "--out", str(tmp_path / "r.png"), "--quiet", "--json"])
    assert code == 0
    code = cli_main(["replay", str(tmp_path / "r.png"), "--out", str(tmp_path / "r2.png"), "--quiet"])
    assert code == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "r.png")), np.asarray(Image.open(tmp_path / "r2.png")))
    capsys.readouterr()


@pytest.mark.parametrize("args, message", [
    (["--image-prompt", "missing.png"], "Image prompt missing.png not found"),
    (["--image-prompt", "ref.png:11"], "weight must be between 0 and 10"),
    (["--image-guidance", "2"], "--image-guidance needs an image prompt"),
    (["--image-prompt", "ref.png", "--image-guidance", "99"], "image guidance scale must be between 0 and 50"),
    (["--image-prompt", "notes.png"], "notes.png"),
])
def test_cli_bad_image_prompts_get_one_line(tiny_model_dir: Path, tmp_path: Path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    reference().save("ref.png")
    Path("notes.png").write_text("not an image")
    code = cli_main(["txt2img", "--model", str(tiny_model_dir), "--prompt", "x", "--steps", "2",
                     "--out", "o.png", "--quiet", *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1
    assert not Path("o.png").exists()


def test_clip_folders_are_checked_before_loading(tiny_clip: Path, tmp_path: Path):
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_clip, pickled)
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    with pytest.raises(StudioError, match="only pickle weights"):
        resolve_clip(str(pickled))
    incomplete = tmp_path / "incomplete"
    shutil.copytree(tiny_clip, incomplete)
    (incomplete / "config.json").unlink()
    with pytest.raises(StudioError, match="no config.json"):
        resolve_clip(str(incomplete))
    no_tokenizer = tmp_path / "no-tokenizer"
    shutil.copytree(tiny_clip, no_tokenizer)
    for name in ("tokenizer.json", "vocab.json", "merges.txt"):
        (no_tokenizer / name).unlink(missing_ok=True)
    with pytest.raises(StudioError, match="no tokenizer"):
        resolve_clip(str(no_tokenizer))
    not_clip = tmp_path / "not-clip"
    shutil.copytree(tiny_clip, not_clip)
    (not_clip / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(StudioError, match="not a CLIP model"):
        resolve_clip(str(not_clip))
    with pytest.raises(StudioError, match="not found"):
        resolve_clip(str(tmp_path / "nowhere"))


def test_bad_image_guidance_settings_get_one_line(tiny_clip: Path):
    for kw, message in (({"start": 0.5, "end": 0.5}, "must end after it starts"), ({"cutouts": 0}, "Cutouts"),
                        ({"renderer": "magic"}, "Unknown image guidance renderer"),
                        ({"smooth": 99}, "smoothing must be between 0 and 16"),
                        ({"prompts": ("x",)}, "ImagePrompt"),
                        ({"prompts": tuple(ImagePrompt(reference()) for _ in range(9))}, "over the limit of 8")):
        with pytest.raises(StudioError, match=message):
            ImageGuidance(**kw)
    with pytest.raises(StudioError, match="PIL image"):
        ImagePrompt("ref.png")
    with pytest.raises(StudioError, match="image_guidance must be"):
        GenerationRequest("x", image_guidance="ref.png")


def test_prompts_file_images_are_checked(tmp_path: Path):
    reference().save(tmp_path / "ref.png")
    with pytest.raises(StudioError, match="not from inline JSON"):
        parse_prompt_table({"#ff0000": {"prompt": "a sun", "image": "ref.png"}})
    with pytest.raises(StudioError, match="background colour"):
        parse_prompt_table({"#ff0000": {"prompt": None, "image": "ref.png"}}, tmp_path)
    with pytest.raises(StudioError, match="image_weight but no image"):
        parse_prompt_table({"#ff0000": {"prompt": "a", "image_weight": 2}}, tmp_path)
    with pytest.raises(StudioError, match="not found"):
        parse_prompt_table({"#ff0000": {"prompt": "a", "image": "gone.png"}}, tmp_path)
    with pytest.raises(StudioError, match="weight must be between 0 and 10"):
        parse_prompt_table({"#ff0000": {"prompt": "a", "image": "ref.png", "image_weight": -1}}, tmp_path)
    table = parse_prompt_table({"#ff0000": {"prompt": "", "image": "ref.png", "image_weight": 3}}, tmp_path)
    assert table["#ff0000"].image.weight == 3


def test_the_clip_trainer_writes_a_folder_the_studio_loads(tiny_model_dir: Path, tmp_path: Path, capsys):
    from training.clip import cli as train_cli

    data = tmp_path / "data"
    data.mkdir()
    lines = []
    for i, (colour, words) in enumerate([((220, 40, 40), "a red sun"), ((40, 60, 220), "a blue lake")] * 6):
        reference(colour, 32).save(data / f"{i}.png")
        lines.append(json.dumps({"file_name": f"{i}.png", "text": words}))
    (data / "metadata.jsonl").write_text("\n".join(lines))
    out = tmp_path / "clip"
    args = ["--data", str(data), "--out", str(out), "--tokenizer", str(tiny_model_dir / "tokenizer"),
            "--steps", "3", "--batch-size", "8", "--heldout", "4", "--image-size", "16", "--width", "32",
            "--layers", "1", "--checkpoint-dir", str(tmp_path / "ckpt"), "--checkpoint-every", "2"]
    assert train_cli(args) == 0
    assert train_cli(args + ["--resume"]) == 0  # continues from the step-2 checkpoint
    assert "clip: resumed at step 2" in capsys.readouterr().out
    report = json.loads((out / "clip.json").read_text())
    assert report["steps"] == 3 and 0 <= report["style_accuracy"] <= 1
    guide = load_clip(str(out))
    assert guide.image_size == 16 and guide.image_features(torch.rand(2, 3, 16, 16)).shape[0] == 2
