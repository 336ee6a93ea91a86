"""Upscaling: spandrel upscalers from safetensors, tiling, refusals, the upscale request and its redraw."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from core.cli import main
from core.engine import Engine
from core.pipeline import img2img_timesteps
from core.errors import CancelledError, StudioError
from core.panorama import panorama_views
from core.recipe import make_recipe, read_recipe, request_from_recipe
from core.region_fusion import FusionPath, RegionFusion
from core.sampling import denoise
from core.tiled_refine import UpscaleRequest
from core.upscale import (BUNDLED, UPSCALERS_DIR, feather, load_upscaler, resolve_upscaler, tile_starts, tiled,
                          to_tensor, upscale)
from core.vae_codec import encode_image
from training.upscaler import build_compact

from analytic import C, analytic_model, constants_table, ddim


def compact_file(path: Path, scale: int = 4, seed: int = 0) -> Path:
    """A tiny Real-ESRGAN Compact (random weights) saved as safetensors, as a user's file would be."""
    torch.manual_seed(seed)
    net = build_compact(feat=4, convs=1, scale=scale)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


def picture(size: tuple[int, int] = (24, 20), seed: int = 0, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = len(mode)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8).squeeze(), mode)


# --- loading and refusing -----------------------------------------------------------------------


@pytest.mark.parametrize("scale", [2, 4])
def test_a_compact_safetensors_file_loads_through_spandrel_and_upscales_to_the_exact_size(tmp_path, scale) -> None:
    path = compact_file(tmp_path / f"compact-x{scale}.safetensors", scale)
    model = load_upscaler(path)
    assert (model.scale, model.architecture) == (scale, "RealESRGAN Compact")
    for factor in (2, 3, 4, 8):
        out = upscale(picture(), factor, path)
        assert out.size == (24 * factor, 20 * factor) and out.mode == "RGB"
    # the network's own output where no resize is needed: tiles or not, the same picture
    x = to_tensor(picture())
    whole = np.array(upscale(picture(), scale, path, tile=4096))
    torch.testing.assert_close(torch.from_numpy(whole).float(),
                               (model.run(x)[0].permute(1, 2, 0) * 255 + 0.5).floor(), atol=1, rtol=0)


def test_alpha_is_resized_beside_the_colour(tmp_path) -> None:
    rgba = picture(mode="RGBA")
    out = upscale(rgba, 2, compact_file(tmp_path / "c.safetensors", 2))
    assert out.mode == "RGBA"
    assert np.array_equal(np.asarray(out.getchannel("A")),
                          np.asarray(rgba.getchannel("A").resize((48, 40), Image.Resampling.LANCZOS)))


def test_resamplers_need_no_file() -> None:
    image = picture()
    assert np.array_equal(np.asarray(upscale(image, 4, "lanczos")),
                          np.asarray(image.resize((96, 80), Image.Resampling.LANCZOS)))
    assert resolve_upscaler("Bicubic") == "bicubic"


def test_the_bundled_upscaler_is_the_default_and_a_name_finds_a_file() -> None:
    if not (UPSCALERS_DIR / f"{BUNDLED}.safetensors").is_file():
        pytest.skip("no bundled upscaler in this checkout")
    assert resolve_upscaler(None) == UPSCALERS_DIR / f"{BUNDLED}.safetensors"
    assert resolve_upscaler(BUNDLED) == resolve_upscaler(None)
    assert load_upscaler(resolve_upscaler(None)).scale == 4


@pytest.mark.parametrize("name,content,message", [
    ("model.pth", b"PK\x03\x04 pickle", "is a pickle; only .safetensors upscalers are loaded"),
    ("model.ckpt", b"", "is a pickle"),
    ("model.onnx", b"", "neither a .safetensors file nor one of"),
    ("garbage.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!", "is not a readable safetensors"),
])
def test_files_that_are_not_safetensors_upscalers_are_refused_in_one_line(tmp_path, name, content, message) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(StudioError, match=message) as info:
        upscale(picture(), 2, str(path))
    assert "\n" not in str(info.value)


def test_weights_of_no_known_architecture_and_missing_files_are_refused(tmp_path) -> None:
    path = tmp_path / "other.safetensors"
    save_file({"encoder.weight": torch.zeros(3, 3)}, str(path))
    with pytest.raises(StudioError, match="no architecture spandrel knows"):
        upscale(picture(), 2, path)
    with pytest.raises(StudioError, match="No upscaler file"):
        upscale(picture(), 2, tmp_path / "absent.safetensors")
    with pytest.raises(StudioError, match="neither a .safetensors file nor one of"):
        upscale(picture(), 2, "absent-name")


def test_scales_sizes_and_tiles_are_checked() -> None:
    for scale, message in ((5, "must be one of 2, 3, 4, 8"), (True, "must be one of"), (2.0, "must be one of")):
        with pytest.raises(StudioError, match=message):
            upscale(picture(), scale, "lanczos")
    with pytest.raises(StudioError, match="over the limit of"):
        upscale(picture((1000, 1000)), 8, "lanczos", max_pixels=4 << 20)
    with pytest.raises(StudioError, match="Tile"):
        upscale(picture(), 2, "lanczos", tile=16)
    with pytest.raises(StudioError, match="must be an image"):
        upscale(np.zeros((4, 4, 3)), 2, "lanczos")  # type: ignore[arg-type]


# --- tiling -------------------------------------------------------------------------------------


def test_tiles_cover_every_pixel_with_the_overlap_asked() -> None:
    for length in (1, 31, 32, 33, 100, 257, 1000):
        for tile, overlap in ((32, 0), (32, 8), (64, 16), (192, 16)):
            starts = tile_starts(length, min(tile, length), overlap)
            assert starts[0] == 0 and starts[-1] + min(tile, length) == length
            assert all(b - a <= min(tile, length) - overlap for a, b in zip(starts, starts[1:]))
            total = torch.zeros(length)
            for s in starts:
                total[s:s + min(tile, length)] += feather(s, min(tile, length), length, overlap)
            assert bool((total > 0).all()), (length, tile, overlap)


def nearest(scale: int):
    return lambda x: F.interpolate(x, scale_factor=scale, mode="nearest")


@pytest.mark.parametrize("tile,overlap", [(32, 0), (32, 8), (40, 12)])
def test_tiled_output_equals_the_untiled_one_for_a_local_map(tile, overlap) -> None:
    """Feathered weights sum to one: a map that depends on each pixel alone shows no seams."""
    x = to_tensor(picture((97, 70)))
    out = tiled(nearest(3), x, 3, tile, overlap)
    torch.testing.assert_close(out, nearest(3)(x), atol=1e-6, rtol=0)


def test_a_constant_image_stays_constant_across_tile_borders(tmp_path) -> None:
    """Biases alone (zero kernels): the network maps a constant to a constant; tiles keep it exact."""
    path = tmp_path / "flat.safetensors"
    net = build_compact(feat=4, convs=1, scale=2)
    state = {k: (torch.zeros_like(v) if k.endswith("weight") and v.ndim == 4 else v) for k, v in net.state_dict().items()}
    state["body.4.bias"] = torch.tensor([0.12, -0.05, 0.02]).repeat_interleave(4)  # one shift per colour, every sub-pixel
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    flat = Image.new("RGB", (130, 90), (120, 60, 200))
    out = np.asarray(upscale(flat, 2, path, tile=48, overlap=8)).reshape(-1, 3)
    assert (out == out[0]).all() and out[0].tolist() == [151, 47, 205]


def test_progress_counts_tiles_and_can_cancel(tmp_path) -> None:
    path = compact_file(tmp_path / "c.safetensors", 2)
    seen: list[tuple[int, int]] = []
    upscale(picture((100, 40)), 2, path, tile=32, overlap=8, progress=lambda d, t: seen.append((d, t)))
    assert seen[-1][0] == seen[-1][1] == len(seen) and len(seen) == 4 * 2
    with pytest.raises(CancelledError):
        upscale(picture((100, 40)), 2, path, tile=32, overlap=8, progress=lambda d, t: d == 2)


# --- the request, its redraw and recipes -------------------------------------------------------


def test_refine_zero_returns_the_upscaled_image_itself(tiny_engine: Engine, tmp_path) -> None:
    path = compact_file(tmp_path / "c.safetensors", 2)
    image = picture((20, 12))
    result = tiny_engine.run(UpscaleRequest(image=image, scale=4, upscaler=str(path)))
    assert np.array_equal(np.asarray(result.images[0]), np.asarray(upscale(image, 4, path)))
    assert result.images[0].size == (80, 48) and result.warnings == []


def test_a_redraw_covers_the_canvas_in_native_views_and_replays_bit_exactly(tiny_engine: Engine) -> None:
    image = picture((36, 20))  # x4: 144x80 px, 18x10 latents, views of the tiny model's 8
    request = UpscaleRequest(image=image, scale=4, upscaler="bicubic", refine=0.5, prompt="a red sun", steps=4,
                             seed=3)
    assert request.size == (144, 80)
    redraw = request.redraw_request(image, native_latent=8)
    assert (redraw.window, redraw.stride, redraw.strength, redraw.init_image) == (8, 4, 0.5, image)
    events: list[str] = []
    result = tiny_engine.run(request, lambda e: events.append(e.stage))
    assert result.images[0].size == (144, 80)
    assert events and set(events) == {"denoise"}  # bicubic has no tiles to count; the redraw's steps only
    enlarged = np.asarray(upscale(image, 4, "bicubic"), np.float64)
    assert not np.array_equal(np.asarray(result.images[0]), enlarged)  # redrawn
    recipe = json.loads(json.dumps(make_recipe(request, {"name": "tiny-sd"}, 0, result.seeds)))
    again = tiny_engine.run(request_from_recipe(recipe))
    assert recipe["kind"] == "upscale" and recipe["request"]["image"]["__image__"]["sha256"]
    assert np.array_equal(np.asarray(again.images[0]), np.asarray(result.images[0]))


def test_a_redraw_rounds_the_canvas_down_to_multiples_of_8(tiny_engine: Engine) -> None:
    request = UpscaleRequest(image=picture((21, 13)), scale=2, upscaler="lanczos", refine=0.3, prompt="p", steps=4)
    result = tiny_engine.run(request)
    assert result.images[0].size == (40, 24) and any("cropped to 40x24" in w for w in result.warnings)


@pytest.mark.parametrize("kwargs,message", [
    ({"scale": 5}, "Upscale factor must be one of"),
    ({"refine": 1.5}, "Refine strength"),
    ({"refine": float("nan")}, "Refine strength"),
    ({"upscaler": 3}, "The upscaler must be a name or a path"),
    ({"windows": "tiles"}, "Unknown windows"),
    ({"tile": 8}, "Tile"),
    ({"overlap": 100}, "Overlap"),
    ({"num_images": 2}, "every copy would be the same image"),
    ({"stride": 0, "window": 8}, "Stride"),
    ({"max_regions": 0}, "Region limit"),
])
def test_bad_upscale_requests_say_how_to_fix_them(kwargs, message) -> None:
    with pytest.raises(StudioError, match=message) as info:
        UpscaleRequest(image=picture(), **kwargs)
    assert "\n" not in str(info.value)


def test_a_constant_canvas_stays_constant_across_redraw_views() -> None:
    """The redraw's fusion with the exact denoiser: img2img of a constant latent over overlapping
    views of a wide canvas lands on the constant everywhere, view borders included (no seams)."""
    scheduler = ddim(8)
    values = [[0.5, -0.2, 0.1, 0.9]]
    height, width = 12, 45
    views = panorama_views(height, width, 8, 4)
    fusion = RegionFusion(analytic_model(scheduler), constants_table(values), [FusionPath(torch.ones(height, width), 0)],
                          views, batch_rows=64)
    constant = torch.tensor(values[0])[None, :, None, None].expand(1, C, height, width)
    timesteps = img2img_timesteps(scheduler, 8, 0.4)
    noise = torch.randn(1, C, height, width, generator=torch.Generator().manual_seed(0))
    start = scheduler.add_noise(constant, noise, timesteps[:1])
    out = denoise(start, scheduler, timesteps, fusion)
    torch.testing.assert_close(out, constant, atol=1e-4, rtol=0)
    assert len(timesteps) == 3


def test_tiled_encode_keeps_the_size(tiny_engine: Engine) -> None:
    vae = tiny_engine.bundle.vae
    image = picture((48, 32))
    plain = encode_image(vae, image, torch.device("cpu"), torch.float32, tiled=False)
    assert encode_image(vae, image, torch.device("cpu"), torch.float32, tiled=True).shape == plain.shape == (1, 4, 4, 6)


# --- CLI ----------------------------------------------------------------------------------------


def cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = main([*map(str, args), "--quiet"])
    out, err = capsys.readouterr()
    return code, out, err


def test_upscale_command_takes_the_prompt_from_the_recipe_and_replays(tiny_model_dir, tmp_path, capsys) -> None:
    source = tmp_path / "source.png"
    code, _, err = cli(capsys, "txt2img", "--model", tiny_model_dir, "--prompt", "a red sun", "--steps", "2",
                       "--seed", "1", "--out", source)
    assert code == 0, err
    out = tmp_path / "big.png"
    code, stdout, err = cli(capsys, "upscale", source, "--model", tiny_model_dir, "--scale", "2", "--upscaler",
                            "bicubic", "--refine", "0.5", "--steps", "2", "--seed", "5", "--out", out, "--json")
    assert code == 0, err
    assert json.loads(stdout)["kind"] == "upscale" and Image.open(out).size == (128, 128)
    recipe = read_recipe(out)
    assert recipe["request"]["prompt"] == "a red sun" and recipe["request"]["scale"] == 2
    code, _, err = cli(capsys, "replay", out, "--out", tmp_path / "again.png")
    assert code == 0, err
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(tmp_path / "again.png")))


def test_upscale_command_errors_are_one_line(tiny_model_dir, tmp_path, capsys) -> None:
    plain = tmp_path / "plain.png"
    picture((16, 16)).save(plain)
    pickle = tmp_path / "net.pth"
    pickle.write_bytes(b"\x80\x04")
    for args, message in (((plain, "--upscaler", pickle), "is a pickle"),
                          ((plain, "--refine", "2"), "Refine strength"),
                          ((tmp_path / "absent.png",), "absent.png")):
        code, _, err = cli(capsys, "upscale", *args, "--model", tiny_model_dir, "--out", tmp_path / "o.png")
        assert code != 0 and message in err and len(err.strip().splitlines()) == 1, err
    code, stdout, err = cli(capsys, "upscale", plain, "--model", tiny_model_dir, "--refine", "0.5", "--steps", "2",
                            "--upscaler", "lanczos", "--out", tmp_path / "o.png", "--json")
    assert code == 0, err
    assert any("No prompt for the redraw" in w for w in json.loads(stdout)["warnings"])


# --- the bench's measures -------------------------------------------------------------------------


def test_psnr_and_ssim_rank_a_copy_above_a_blur_above_noise() -> None:
    from bench.bench_upscale import quality_table, ssim
    from bench.common import psnr

    image = np.asarray(picture((64, 64)).resize((128, 128), Image.Resampling.NEAREST))
    blurred = np.asarray(Image.fromarray(image).resize((32, 32), Image.Resampling.BOX).resize((128, 128)))
    noise = np.random.default_rng(1).integers(0, 256, image.shape, dtype=np.uint8)
    assert psnr(image, image) > 100 and ssim(image, image) == pytest.approx(1.0)
    assert psnr(image, blurred) > psnr(image, noise) and ssim(image, blurred) > ssim(image, noise)
    table = quality_table("bicubic", count=1)
    assert set(table) == {"256->1024", "128->512"} and set(table["128->512"]) == {"bicubic", "lanczos"}
    assert all(10 < row["psnr"] < 60 and 0 < row["ssim"] <= 1 for pair in table.values() for row in pair.values())


def test_the_bundled_upscaler_beats_bicubic_and_its_tiles_do_not_show() -> None:
    """Meaning, on held-out paintings the network never saw (the bench measures 24 of each size)."""
    from bench.bench_upscale import heldout_pairs
    from bench.common import psnr

    if not (UPSCALERS_DIR / f"{BUNDLED}.safetensors").is_file():
        pytest.skip("no bundled upscaler in this checkout")
    gains = []
    for low, high in heldout_pairs(3, 506, 512, 128):
        image = Image.fromarray(low)
        ours = np.asarray(upscale(image, 4, None, tile=72, overlap=32))
        whole = np.asarray(upscale(image, 4, None, tile=4096))
        assert np.abs(ours.astype(int) - whole).max() <= 2  # tiles of 72 px: 9 of them, seams invisible
        gains.append(psnr(ours, high) - psnr(np.asarray(upscale(image, 4, "bicubic")), high))
    assert np.mean(gains) > 1.0, gains
