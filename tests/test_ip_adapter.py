"""IP-Adapter image prompts: diffusers' own loader and pipeline as the reference, on the tiny
model with a small random adapter and image encoder built and saved here; composition with the
other methods, recipes, the CLI, bad folders and the trainer."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from PIL import Image

from core.cli import main as cli_main
from core.engine import Engine
from core.errors import StudioError
from core.image_prompt import ImageGuidance, ImagePrompt
from core.ip_adapter import install, load_ip_adapter, read_state, resolve_ip_adapter, split_tokens
from core.outputs import replay, save_result
from core.panorama import MultiDiffusionRequest
from core.region_map import Region
from core.requests import GenerationRequest
from core.stroke_guidance import stroke_request
from training.clip import build_tiny_clip
from training.ip_adapter import initial_state, main as train_main, save_adapter

PROMPT = "a red sun over purple mountains"


@pytest.fixture(scope="module")
def tiny_adapter(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random IP-Adapter for the tiny model, its image encoder a tiny CLIP's vision tower."""
    root = tmp_path_factory.mktemp("ip")
    clip = build_tiny_clip(root / "clip", tiny_model_dir / "tokenizer")
    unet = UNet2DConditionModel.from_pretrained(tiny_model_dir / "unet")
    state = initial_state(unet, embed_dim=16, seed=3, copy_text=False)
    return save_adapter(root / "adapter", state, clip, {"test": True})


def reference(colour=(200, 40, 40), size=48) -> Image.Image:
    rng = np.random.default_rng(sum(colour))
    pixels = np.clip(np.array(colour)[None, None] + rng.normal(0, 40, (size, size, 3)), 0, 255)
    return Image.fromarray(pixels.astype(np.uint8))


def ip(adapter: Path, scale: float = 0.8, *images: Image.Image) -> ImageGuidance:
    prompts = tuple(ImagePrompt(im) for im in (images or (reference(),)))
    return ImageGuidance(prompts=prompts, method="ip-adapter", ip_adapter=str(adapter), scale=scale)


def request(**kw) -> GenerationRequest:
    return GenerationRequest(**{"prompt": PROMPT, "steps": 4, "seed": 5, "negative_prompt": "blurry", **kw})


def test_txt2img_with_an_ip_adapter_equals_diffusers_pipeline(tiny_model_dir: Path, tiny_engine: Engine,
                                                              tiny_adapter: Path):
    """pipe.load_ip_adapter + pipe(ip_adapter_image=...) is the reference: same latents."""
    pipe = StableDiffusionPipeline.from_pretrained(tiny_model_dir, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_ip_adapter(str(tiny_adapter), subfolder="", weight_name="ip-adapter.safetensors",
                         image_encoder_folder="image_encoder")
    pipe.set_ip_adapter_scale(0.8)
    theirs = pipe(PROMPT, negative_prompt="blurry", ip_adapter_image=reference(), num_inference_steps=4,
                  guidance_scale=7.5, generator=torch.Generator("cpu").manual_seed(5), output_type="latent").images
    ours = tiny_engine.run(request(image_guidance=ip(tiny_adapter))).latents
    plain = tiny_engine.run(request()).latents
    assert (ours - theirs).abs().max().item() <= 1e-4
    assert (ours - plain).abs().max().item() > 1e-2  # the adapter acts


def test_the_model_call_passes_tokens_as_diffusers_unet_does(tiny_model_dir: Path, tiny_adapter: Path):
    """install() + split_tokens (tokens in the embeddings) equals the UNet's own added_cond_kwargs path:
    the one place that relies on diffusers' internals fails here when an upgrade changes them."""
    unet = UNet2DConditionModel.from_pretrained(tiny_model_dir / "unet").eval()
    adapter = load_ip_adapter(str(tiny_adapter))
    embeds = adapter.embed([reference()])
    z, t, text = torch.randn(1, 4, 8, 8), torch.tensor([500]), torch.randn(1, 77, 32)
    reference_unet = UNet2DConditionModel.from_pretrained(tiny_model_dir / "unet").eval()
    reference_unet._load_ip_adapter_weights([adapter.state], low_cpu_mem_usage=False)
    with torch.no_grad():
        theirs = reference_unet(z, t, text, added_cond_kwargs={"image_embeds": [embeds[:, None]]}).sample
        before = unet(z, t, text).sample
        with install(unet, adapter.state, 1.0) as projection:
            tokens = projection([embeds[:, None]])[0][:, 0]
            from core.ip_adapter import ImageTokens

            ours = unet(z, t, split_tokens(torch.cat([text, tokens], 1), ImageTokens(tokens, tokens, {}))).sample
        after = unet(z, t, text).sample
    assert torch.allclose(ours, theirs, atol=1e-6)
    assert torch.equal(before, after) and unet.encoder_hid_proj is None  # processors restored


def test_scale_zero_equals_text_to_image_and_the_unet_is_restored(tiny_engine: Engine, tiny_adapter: Path):
    plain = tiny_engine.run(request()).latents
    zero = tiny_engine.run(request(image_guidance=ip(tiny_adapter, 0.0))).latents
    tiny_engine.run(request(image_guidance=ip(tiny_adapter)))
    again = tiny_engine.run(request()).latents
    assert torch.equal(plain, zero) and torch.equal(plain, again)
    assert tiny_engine.image_tokens is None


def test_the_adapter_composes_with_regions_panoramas_and_stroke_guidance(tiny_engine: Engine, tiny_adapter: Path):
    left = Image.new("L", (64, 64), 0)
    left.paste(255, (0, 0, 32, 64))
    regions = (Region(mask=left, prompt="a red sun"),)
    runs = {
        "regions": lambda g: MultiDiffusionRequest("a field", regions=regions, steps=3, seed=2, image_guidance=g),
        "panorama": lambda g: MultiDiffusionRequest("a field", kind="panorama", width=128, height=64, window=8,
                                                    stride=4, steps=3, seed=2, image_guidance=g),
        "stroke": lambda g: stroke_request("a sun", Image.new("RGB", (64, 64), (200, 30, 30)), steps=6, seed=2,
                                           fast=True, image_guidance=g),
    }
    for name, make in runs.items():
        plain = tiny_engine.run(make(None)).latents
        neutral = tiny_engine.run(make(ip(tiny_adapter, 0.0))).latents
        guided = tiny_engine.run(make(ip(tiny_adapter))).latents
        assert torch.equal(plain, neutral), name
        assert (guided - plain).abs().max().item() > 1e-3, name


def test_a_region_image_prompt_gets_its_own_tokens(tiny_engine: Engine, tiny_adapter: Path):
    """MultiDiffusion with an image per region: the region's reference acts (mostly) inside it."""
    left = Image.new("L", (64, 64), 0)
    left.paste(255, (0, 0, 32, 64))
    settings = ImageGuidance(prompts=(), method="ip-adapter", ip_adapter=str(tiny_adapter), scale=1.0)

    def run(image_prompt):
        region = Region(mask=left, prompt="a red sun", image_prompt=image_prompt)
        return tiny_engine.run(MultiDiffusionRequest("a field", regions=(region,), steps=3, seed=2,
                                                     image_guidance=settings)).latents

    without, with_image = run(None), run(ImagePrompt(reference((20, 200, 40))))
    change = (with_image - without).abs().mean(dim=(0, 1))
    assert change[:, :4].mean() > 2 * change[:, 4:].mean() > 0


def test_recipes_record_the_adapter_and_replay_bit_exactly(tiny_engine: Engine, tiny_adapter: Path, tmp_path: Path):
    left = Image.new("L", (64, 64), 0)
    left.paste(255, (0, 0, 32, 64))
    region = Region(mask=left, prompt="a sun", image_prompt=ImagePrompt(reference((20, 200, 40)), 2.0))
    result = tiny_engine.run(MultiDiffusionRequest("a field", regions=(region,), steps=3, seed=9,
                                                   image_guidance=ip(tiny_adapter)))
    path = save_result(result, tiny_engine.bundle, tmp_path / "a.png")[0]
    image, again, _ = replay(path)
    assert again.request.image_guidance.method == "ip-adapter"
    assert again.request.image_guidance.ip_adapter == str(tiny_adapter)
    assert np.array_equal(np.asarray(result.images[0]), np.asarray(image))


def test_cli_ip_adapter_flags(tiny_model_dir: Path, tiny_adapter: Path, tmp_path: Path, capsys):
    reference().save(tmp_path / "ref.png")
    out = tmp_path / "t.png"
    code = cli_main(["txt2img", "--model", str(tiny_model_dir), "--prompt", "a square", "--steps", "3", "--seed", "1",
                     "--image-prompt", str(tmp_path / "ref.png"), "--ip-adapter", str(tiny_adapter),
                     "--image-guidance", "0.6", "--out", str(out), "--quiet"])
    assert code == 0 and out.exists()
    code = cli_main(["replay", str(out), "--out", str(tmp_path / "t2.png"), "--quiet"])
    assert code == 0
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(tmp_path / "t2.png")))
    capsys.readouterr()


@pytest.mark.parametrize("args, message", [
    (["--ip-adapter", "ADAPTER"], "--ip-adapter needs an image prompt"),
    (["--image-prompt", "ref.png", "--ip-adapter", "ADAPTER", "--clip-model", "x"], "belongs to CLIP guidance"),
    (["--image-prompt", "ref.png", "--ip-adapter", "ADAPTER", "--image-method", "clip"], "--ip-adapter needs"),
    (["--image-prompt", "ref.png", "--ip-adapter", "nowhere"], "IP-Adapter nowhere not found"),
    (["--image-prompt", "ref.png", "--ip-adapter", "ADAPTER", "--image-guidance", "6"],
     "IP-Adapter scale must be between 0 and 5"),
])
def test_cli_bad_ip_adapter_input_gets_one_line(tiny_model_dir: Path, tiny_adapter: Path, tmp_path: Path, capsys,
                                                monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    reference().save("ref.png")
    args = [str(tiny_adapter) if a == "ADAPTER" else a for a in args]
    code = cli_main(["txt2img", "--model", str(tiny_model_dir), "--prompt", "x", "--steps", "2", "--out", "o.png",
                     "--quiet", *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1
    assert not Path("o.png").exists()


def test_adapter_folders_are_checked_before_loading(tiny_adapter: Path, tmp_path: Path, tiny_engine: Engine):
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_adapter, pickled)
    (pickled / "ip-adapter.safetensors").rename(pickled / "ip-adapter.bin")
    with pytest.raises(StudioError, match="only pickle weights"):
        resolve_ip_adapter(str(pickled))
    no_encoder = tmp_path / "no-encoder"
    shutil.copytree(tiny_adapter, no_encoder)
    shutil.rmtree(no_encoder / "image_encoder")
    with pytest.raises(StudioError, match="no image_encoder/config.json"):
        resolve_ip_adapter(str(no_encoder))
    h94 = tmp_path / "models"  # h94/IP-Adapter's layout: models/ip-adapter_sd15.safetensors + models/image_encoder
    shutil.copytree(tiny_adapter, h94)
    (h94 / "ip-adapter.safetensors").rename(h94 / "ip-adapter_sd15.safetensors")
    assert resolve_ip_adapter(str(h94 / "ip-adapter_sd15.safetensors"))[0].name == "ip-adapter_sd15.safetensors"
    assert resolve_ip_adapter(str(h94))[0].name == "ip-adapter_sd15.safetensors"
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(tiny_adapter / "ip-adapter.safetensors"))
    for name, change in (("extra", {"evil.code": torch.zeros(1)}),
                         ("plus", {"image_proj.latents": torch.zeros(1, 4, 32)}),
                         ("bad-layer", {"ip_adapter.1.to_q_ip.weight": torch.zeros(32, 32)})):
        folder = tmp_path / name
        shutil.copytree(tiny_adapter, folder)
        save_file({**tensors, **change}, str(folder / "ip-adapter.safetensors"))
        with pytest.raises(StudioError, match="IP-Adapter"):
            read_state(folder / "ip-adapter.safetensors", name)
    wide = tmp_path / "wide"  # an adapter for 64-wide text embeddings (another model family)
    shutil.copytree(tiny_adapter, wide)
    save_file({k: (torch.zeros(4 * 64, 16) if k == "image_proj.proj.weight" else torch.zeros(4 * 64)
                   if k == "image_proj.proj.bias" else torch.zeros(64) if k.startswith("image_proj.norm")
                   else torch.zeros(v.shape[0], 64)) for k, v in tensors.items()}, str(wide / "ip-adapter.safetensors"))
    with pytest.raises(StudioError, match="made for models with 64-wide text embeddings"):
        tiny_engine.run(request(image_guidance=ip(wide)))
    assert tiny_engine.image_tokens is None


def test_paint_with_words_and_one_pass_regions_are_refused_with_the_adapter(tiny_engine: Engine, tiny_adapter: Path):
    scribble = Image.new("RGB", (64, 64), (255, 255, 255))
    scribble.paste((255, 0, 0), (0, 0, 32, 32))
    with pytest.raises(StudioError, match="paint-with-words"):
        tiny_engine.run(stroke_request("a red sun", scribble, words={"#ff0000": "red sun"}, steps=2,
                                       image_guidance=ip(tiny_adapter)))
    left = Image.new("L", (64, 64), 0)
    left.paste(255, (0, 0, 32, 64))
    with pytest.raises(StudioError, match="one-pass region prompts"):
        tiny_engine.run(MultiDiffusionRequest("a field", regions=(Region(mask=left, prompt="a sun"),), steps=2,
                                              attention=True, image_guidance=ip(tiny_adapter)))


def test_a_runner_called_directly_refuses_an_adapter_request(tiny_engine: Engine, tiny_adapter: Path):
    assert torch.equal(tiny_engine.generate(request(image_guidance=ip(tiny_adapter))).latents,
                       tiny_engine.run(request(image_guidance=ip(tiny_adapter))).latents)  # generate installs it too
    from core.panorama import run_multidiffusion

    with pytest.raises(StudioError, match="Engine.run"):
        run_multidiffusion(tiny_engine, MultiDiffusionRequest("a field", steps=2, image_guidance=ip(tiny_adapter)))


def test_the_trainer_writes_an_adapter_the_studio_loads(tiny_model_dir: Path, tmp_path: Path, tiny_engine: Engine,
                                                        capsys):
    clip = build_tiny_clip(tmp_path / "clip", tiny_model_dir / "tokenizer")
    out = tmp_path / "adapter"
    train_main(["--model", str(tiny_model_dir), "--clip", str(clip), "--out", str(out), "--images", "8",
                "--resolution", "64", "--steps", "3", "--batch-size", "2", "--workers", "1",
                "--checkpoint-dir", str(tmp_path / "ckpt"), "--checkpoint-every", "2"])
    info = json.loads((out / "ip_adapter.json").read_text())
    assert info["steps"] == 3 and info["images"] == 8
    train_main(["--model", str(tiny_model_dir), "--clip", str(clip), "--out", str(out), "--images", "8",
                "--resolution", "64", "--steps", "4", "--batch-size", "2", "--workers", "1",
                "--checkpoint-dir", str(tmp_path / "ckpt"), "--resume"])
    assert "resumed at step 2" in capsys.readouterr().out
    result = tiny_engine.run(request(steps=2, image_guidance=ip(out)))
    assert result.images[0].size == (64, 64)



def test_cli_takes_the_models_recommended_method_adapter_and_scale(tiny_model_dir: Path, tiny_adapter: Path,
                                                                   tmp_path: Path, capsys):
    from core.recipe import read_recipe

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / "studio.json").write_text(json.dumps({"recommended": {
        "image_method": "ip-adapter", "ip_adapter": str(tiny_adapter), "ip_adapter_scale": 0.7}}))
    reference().save(tmp_path / "ref.png")
    for extra, method, scale in (([], "ip-adapter", 0.7), (["--image-guidance", "0.4"], "ip-adapter", 0.4),
                                 (["--image-method", "clip"], "clip", 1.0)):
        out = tmp_path / f"{method}-{scale}.png"
        code = cli_main(["txt2img", "--model", str(model), "--prompt", "a square", "--steps", "2",
                         "--image-prompt", str(tmp_path / "ref.png"), "--out", str(out), "--quiet", *extra])
        assert code == 0, capsys.readouterr().err
        guidance = read_recipe(out)["request"]["image_guidance"]
        assert (guidance["method"], guidance["scale"]) == (method, scale)
    capsys.readouterr()


# --- meaning, on the bundled demo model and its bundled adapter --------------------------------

@pytest.fixture(scope="module")
def demo() -> Engine:
    return Engine.load(model="studio-demo", device="cpu")


def held_out(time: str) -> Image.Image:
    """The first held-out painting (bench_image_prompt's reference seed) at this time of day."""
    from training import procedural as P
    from training.make_dataset import item_scene

    for i in range(200):
        scene, style, _ = item_scene(707, i)
        if scene.time == time:
            return Image.fromarray(P.render_painting(scene, 256, style))
    raise AssertionError(f"no {time} painting")


def brightness(image: Image.Image, cols: slice = slice(None)) -> float:
    return float(np.asarray(image.convert("RGB"), dtype=np.float64)[:, cols].mean() / 255)


def test_a_night_reference_gives_a_darker_picture_than_a_day_one(demo: Engine):
    """With the neutral prompt "a painting", the reference's light decides the picture's."""
    def run(time: str) -> Image.Image:
        guidance = ImageGuidance(prompts=(ImagePrompt(held_out(time)),), method="ip-adapter")
        return demo.run(GenerationRequest("a painting", width=256, height=256, steps=15, seed=1,
                                          image_guidance=guidance)).images[0]

    night, day = brightness(run("night")), brightness(run("day"))
    assert day > night + 0.15, (day, night)


def test_a_region_described_by_a_night_picture_is_dark_inside_it(demo: Engine):
    """MultiDiffusion with an image per region: the left half's night reference darkens only it."""
    left = Image.new("L", (256, 256), 0)
    left.paste(255, (0, 0, 128, 256))
    whole = ImageGuidance(prompts=(ImagePrompt(held_out("day")),), method="ip-adapter")

    def run(time: str) -> Image.Image:
        region = Region(mask=left, prompt="", image_prompt=ImagePrompt(held_out(time)))
        return demo.run(MultiDiffusionRequest("a painting", regions=(region,), width=256, height=256, steps=15,
                                              seed=2, image_guidance=whole)).images[0]

    night, day = run("night"), run("day")
    assert brightness(day, slice(0, 112)) > brightness(night, slice(0, 112)) + 0.1
    assert abs(brightness(day, slice(144, 256)) - brightness(night, slice(144, 256))) < 0.1
