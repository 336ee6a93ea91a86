"""Recipes in PNGs, bit-exact replay, and the CLI's contract (exit codes, one-line errors, --json)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.cli import main
from core.engine import Engine
from core.outputs import replay, save_result
from core.recipe import read_recipe, request_from_recipe
from core.requests import GenerationRequest

ROOT = Path(__file__).resolve().parent.parent


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_png_embeds_parameters_and_recipe(tiny_engine: Engine, tmp_path: Path) -> None:
    req = GenerationRequest(prompt="a red sun", negative_prompt="blurry", steps=3, seed=11, scheduler="ddim")
    [path] = save_result(tiny_engine.generate(req), tiny_engine.bundle, tmp_path / "a.png")
    info = Image.open(path).info
    assert info["parameters"].startswith("a red sun\nNegative prompt: blurry\nSteps: 3, Sampler: DDIM, CFG scale: 7.5")
    assert "Seed: 11, Size: 64x64" in info["parameters"]
    recipe = read_recipe(path)
    assert recipe["kind"] == "txt2img" and recipe["seed"] == 11
    assert request_from_recipe(recipe) == req


def test_img2img_recipe_embeds_the_input_and_replays_bit_exactly(tiny_engine: Engine, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    init = Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    req = GenerationRequest(prompt="a lake", init_image=init, strength=0.6, steps=4, seed=2, num_images=2)
    paths = save_result(tiny_engine.generate(req), tiny_engine.bundle, tmp_path / "b.png")
    assert [p.name for p in paths] == ["b-1.png", "b-2.png"]
    rebuilt = request_from_recipe(read_recipe(paths[1]))
    assert np.array_equal(np.asarray(rebuilt.init_image), np.asarray(init))
    image, _, _ = replay(paths[1])
    assert np.array_equal(np.asarray(image), pixels(paths[1]))


def test_replay_errors(tmp_path: Path) -> None:
    from core.errors import StudioError

    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    with pytest.raises(StudioError, match="no studio recipe"):
        read_recipe(plain)
    with pytest.raises(StudioError, match="not found"):
        read_recipe(tmp_path / "missing.png")


def run_cli(*args: str, capsys) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_txt2img_json_and_replay(tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli.png"
    code, stdout, _ = run_cli("txt2img", "--model", str(tiny_model_dir), "--prompt", "a red sun", "--steps", "3",
                              "--seed", "4", "--scheduler", "euler", "--out", str(out), "--json", capsys=capsys)
    assert code == 0
    summary = json.loads(stdout)
    assert summary["outputs"] == [str(out)] and summary["seeds"] == [4]
    assert set(summary["timings"]) >= {"load", "encode", "denoise", "decode", "total"}
    assert summary["device"] == "cpu" and summary["dtype"] == "fp32"
    again = tmp_path / "again.png"
    code, _, _ = run_cli("replay", str(out), "--out", str(again), "--quiet", capsys=capsys)
    assert code == 0 and np.array_equal(pixels(out), pixels(again))


def test_cli_img2img(tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    src = tmp_path / "in.png"
    Image.new("RGB", (64, 48), (200, 30, 30)).save(src)
    code, stdout, _ = run_cli("img2img", "--model", str(tiny_model_dir), "--prompt", "a red barn", "--image", str(src),
                              "--strength", "0.5", "--steps", "4", "--seed", "1", "--quiet",
                              "--out", str(tmp_path / "o.png"), capsys=capsys)
    assert code == 0 and Image.open(tmp_path / "o.png").size == (64, 48)


@pytest.mark.parametrize("args, message", [
    (["--model", "{model}", "--width", "100"], "Width 100 is not a multiple of 8: use 96 or 104"),
    (["--model", "{model}", "--steps", "0"], "Steps must be between"),
    (["--model", "{model}", "--cfg", "99"], "Guidance scale must be between"),
    (["--model", "{tmp}/nothing-here"], "not found"),
    (["--model", "{model}", "--scheduler", "magic"], "Unknown scheduler"),
    (["--model", "{model}", "--out", "{tmp}/x.jpg"], "must be a .png"),
    (["--model", "{model}", "--width", "4096", "--height", "4096"], "over the limit"),
])
def test_cli_user_errors_exit_2_with_one_line(tiny_model_dir, tmp_path, capsys, args, message) -> None:
    args = [a.format(model=tiny_model_dir, tmp=tmp_path) for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "x.png")]
    code, stdout, stderr = run_cli("txt2img", "--prompt", "p", "--quiet", *args, capsys=capsys)
    assert code == 2
    lines = [l for l in stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], stderr
    assert "Traceback" not in stderr and not (tmp_path / "x.png").exists()


def test_cli_unreadable_image_and_bad_flags(tiny_model_dir, tmp_path, capsys) -> None:
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    code, _, stderr = run_cli("img2img", "--model", str(tiny_model_dir), "--prompt", "p", "--image", str(bad),
                              "--out", str(tmp_path / "o.png"), "--quiet", capsys=capsys)
    assert code == 2 and "Cannot read image" in stderr and len(stderr.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as exit_info:
        main(["txt2img", "--prompt", "p", "--out", "o.png", "--bogus"])
    assert exit_info.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_cli_cancel_writes_nothing(tiny_model_dir, tmp_path, capsys, monkeypatch) -> None:
    import core.cli as cli

    def cancelling_bar(args):
        return (lambda event: True), (lambda: None)  # cancel at the first step

    monkeypatch.setattr(cli, "progress_bar", cancelling_bar)
    code, _, stderr = run_cli("txt2img", "--model", str(tiny_model_dir), "--prompt", "p", "--steps", "5",
                              "--out", str(tmp_path / "c.png"), capsys=capsys)
    assert code == 130 and "cancelled" in stderr and not list(tmp_path.iterdir())


def test_cli_runs_as_module(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "core", "txt2img", "--model", str(tiny_model_dir), "--prompt", "a sun",
                          "--steps", "2", "--seed", "1", "--out", str(tmp_path / "m.png")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "denoise" in out.stderr  # the progress bar is on stderr
    assert out.stdout.strip() == str(tmp_path / "m.png")
