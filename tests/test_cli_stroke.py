"""``python -m core stroke``: every method on a folder model, whole and partial scribbles, replay, bad input."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from core.cli import main
from core.recipe import read_recipe

PROMPT = "a castle on a hill, blue sky and a river"
SKY, CASTLE, RIVER = (90, 160, 230), (160, 160, 160), (40, 80, 200)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Scribbles (whole RGB, partial RGBA, empty, odd-sized, not an image) and words files."""
    folder = tmp_path_factory.mktemp("scribbles")
    whole = Image.new("RGB", (64, 64), SKY)
    draw = ImageDraw.Draw(whole)
    draw.rectangle([16, 8, 40, 36], fill=CASTLE)
    draw.rectangle([0, 48, 64, 60], fill=RIVER)
    partial = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    draw = ImageDraw.Draw(partial)
    draw.rectangle([16, 8, 40, 36], fill=CASTLE + (255,))
    draw.rectangle([0, 48, 64, 60], fill=RIVER + (255,))
    paths = {"whole": folder / "whole.png", "partial": folder / "partial.png", "empty": folder / "empty.png",
             "odd": folder / "odd.png", "text": folder / "notes.png", "words": folder / "words.json",
             "unknown": folder / "unknown.json", "broken": folder / "broken.json"}
    whole.save(paths["whole"])
    partial.save(paths["partial"])
    Image.new("RGBA", (64, 64), (0, 0, 0, 0)).save(paths["empty"])
    Image.new("RGB", (100, 60), SKY).save(paths["odd"])
    paths["text"].write_text("not an image")
    paths["words"].write_text(json.dumps({"#a0a0a0": "castle", "#2850c8": ["river"]}))
    paths["unknown"].write_text(json.dumps({"#a0a0a0": ["castle", "dragon"], "#2850c8": "moat"}))
    paths["broken"].write_text("{'#a0a0a0': castle")
    return paths


def stroke(model: Path, strokes: Path, out: Path, *extra: str) -> list[str]:
    return ["stroke", "--model", str(model), "--strokes", str(strokes), "--prompt", PROMPT, "--steps", "4",
            "--grad-steps", "2", "--seed", "7", "--device", "cpu", "--quiet", "--out", str(out), *extra]


@pytest.mark.parametrize("method", ["gradop+", "gradop", "sdedit"])
@pytest.mark.parametrize("scribble", ["whole", "partial"])
def test_every_method_runs_from_the_cli(tiny_model_dir: Path, files: dict[str, Path], tmp_path: Path,
                                        capsys: pytest.CaptureFixture, method: str, scribble: str) -> None:
    out = tmp_path / "out.png"
    assert main(stroke(tiny_model_dir, files[scribble], out, "--method", method, "--json")) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["kind"] == "stroke" and summary["outputs"] == [str(out)]
    with Image.open(out) as image:
        assert image.size == (64, 64)
    request = read_recipe(out)["request"]
    assert request["method"] == method and request["steps"] == 4


def test_fast_mode_words_and_fidelity_replay_bit_exactly(tiny_model_dir: Path, files: dict[str, Path],
                                                         tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    first, again = tmp_path / "first.png", tmp_path / "again.png"
    argv = stroke(tiny_model_dir, files["partial"], first, "--fast", "--fidelity", "0.8", "--words",
                  str(files["words"]), "--width", "48", "--height", "32")
    assert main(argv) == 0
    assert "Only 2 of 5 iterative steps fit" in capsys.readouterr().err
    recipe = read_recipe(first)["request"]
    assert recipe["fast"] is True and recipe["iterative_steps"] == 5 and recipe["fidelity"] == 0.8
    assert recipe["renderer"] == "linear"  # --renderer auto, and the tiny model has no tiny decoder
    assert recipe["words"] == [["#a0a0a0", "castle"], ["#2850c8", "river"]]
    assert main(["replay", str(first), "--out", str(again), "--device", "cpu", "--quiet"]) == 0
    with Image.open(first) as a, Image.open(again) as b:
        assert a.size == (48, 32) and np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("case, extra, message", [
    ("text", (), "Cannot read image"),
    ("missing", (), "not found"),
    ("empty", (), "empty"),
    ("odd", (), "width 100 is not a multiple of 8: use 96 or 104"),
    ("whole", ("--width", "60"), "Width 60 is not a multiple of 8"),
    ("whole", ("--words", "UNKNOWN"), "Words not in the prompt: 'dragon', 'moat'"),
    ("whole", ("--words", "BROKEN"), "not valid JSON"),
    ("whole", ("--fidelity", "1.5"), "Fidelity must be between 0 and 1"),
    ("whole", ("--strength", "-0.1"), "Strength must be between 0 and 1"),
    ("whole", ("--iterative-steps", "101"), "Iterative steps must be between 0 and 100"),
    ("whole", ("--scheduler", "dpmpp_2m"), "--scheduler ddim"),
    ("whole", ("--method", "magic"), "invalid choice"),
    ("whole", ("--fast", "--renderer", "tiny"), "This model has no usable tiny decoder"),
])
def test_bad_input_exits_2_with_one_line(tiny_model_dir: Path, files: dict[str, Path], tmp_path: Path,
                                         capsys: pytest.CaptureFixture, case: str, extra: tuple, message: str) -> None:
    extra = tuple(str(files["unknown"]) if e == "UNKNOWN" else str(files["broken"]) if e == "BROKEN" else e
                  for e in extra)
    strokes = files.get(case, tmp_path / "nowhere.png")
    code = run(stroke(tiny_model_dir, strokes, tmp_path / "x.png", *extra))
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "x.png").exists()


def run(argv: list[str]) -> int:
    """main's exit code, also for argparse's usage errors (SystemExit)."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code)


def test_scribble_colours_with_their_own_prompts(tiny_model_dir: Path, files: dict[str, Path], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    table = tmp_path / "prompts.json"
    table.write_text(json.dumps({"#a0a0a0": "a grey stone castle"}))  # the sky and the river: background
    first, again = tmp_path / "first.png", tmp_path / "again.png"
    assert main(stroke(tiny_model_dir, files["whole"], first, "--prompts", str(table))) == 0
    recipe = read_recipe(first)["request"]
    assert [(r["name"], r["prompt"]) for r in recipe["regions"]] == [("#a0a0a0", "a grey stone castle")]
    assert main(["replay", str(first), "--out", str(again), "--device", "cpu", "--quiet"]) == 0
    with Image.open(first) as a, Image.open(again) as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))
    words = tmp_path / "w.json"
    words.write_text(json.dumps({"#a0a0a0": "castle"}))
    capsys.readouterr()
    assert main(stroke(tiny_model_dir, files["whole"], tmp_path / "x.png", "--prompts", str(table), "--words",
                       str(words))) == 2
    err = capsys.readouterr().err.strip()
    assert "Words and region prompts do not combine" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x.png").exists()


def test_a_scribble_guided_panorama_with_its_own_prompts(tiny_model_dir: Path, files: dict[str, Path],
                                                         tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    table = tmp_path / "prompts.json"
    table.write_text(json.dumps({"#a0a0a0": "a grey stone castle"}))
    first, again = tmp_path / "wide.png", tmp_path / "again.png"
    assert main(stroke(tiny_model_dir, files["whole"], first, "--prompts", str(table), "--width", "192",
                       "--panorama")) == 0
    with Image.open(first) as image:
        assert image.size == (192, 64)
    recipe = read_recipe(first)["request"]
    assert recipe["panorama"] is True and recipe["width"] == 192
    assert main(["replay", str(first), "--out", str(again), "--device", "cpu", "--quiet"]) == 0
    with Image.open(first) as a, Image.open(again) as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))
    shifted = tmp_path / "shifted.png"
    assert main(stroke(tiny_model_dir, files["whole"], shifted, "--width", "192", "--panorama", "--windows",
                       "shifted")) == 0
    assert read_recipe(shifted)["request"]["windows"] == "shifted"
    full_circle = tmp_path / "360.png"
    assert main(stroke(tiny_model_dir, files["whole"], full_circle, "--width", "192", "--panorama", "--circular")) == 0
    assert read_recipe(full_circle)["request"]["circular"] is True
    capsys.readouterr()
    assert run(stroke(tiny_model_dir, files["whole"], tmp_path / "x.png", "--circular")) == 2
    err = capsys.readouterr().err.strip()
    assert "360° picture is made in MultiDiffusion's windows" in err and len(err.splitlines()) == 1
    assert run(stroke(tiny_model_dir, files["whole"], tmp_path / "x.png", "--words", str(files["words"]),
                      "--width", "192", "--panorama")) == 2
    err = capsys.readouterr().err.strip()
    assert "Words do not work on panorama canvases yet" in err and len(err.splitlines()) == 1
