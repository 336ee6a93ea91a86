"""Recommended settings in a model folder (studio.json): read, validated, used where the person has not chosen."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from core.cli import DEFAULT_CFG, DEFAULT_STEPS, apply_recommended, build_parser
from core.errors import StudioError
from core.model_settings import SETTINGS_FILE, Recommended, read_recommended, recommended_for


def write(folder: Path, data: object) -> Path:
    (folder / SETTINGS_FILE).write_text(json.dumps(data), encoding="utf-8")
    return folder


def test_absent_file_recommends_nothing(tmp_path: Path) -> None:
    assert read_recommended(tmp_path) == Recommended()
    assert Recommended().get("steps", 30) == 30


def test_reads_every_setting(tmp_path: Path) -> None:
    rec = read_recommended(write(tmp_path, {"recommended": {"guidance_scale": 5, "steps": 25, "fidelity": 0.7}}))
    assert (rec.guidance_scale, rec.steps, rec.fidelity) == (5, 25, 0.7)


@pytest.mark.parametrize("data", [
    [1, 2], {"recommended": [1]}, {"other": {}}, {"recommended": {"cfg": 5}}, {"recommended": {"steps": "30"}},
    {"recommended": {"steps": 2.5}}, {"recommended": {"guidance_scale": 1e9}}, {"recommended": {"fidelity": -1}},
    {"recommended": {"steps": True}}, {"recommended": {"image_method": "magic"}},
    {"recommended": {"ip_adapter_scale": 9}}, {"recommended": {"ip_adapter": 3}},
])
def test_bad_files_are_one_clear_error(tmp_path: Path, data: object) -> None:
    with pytest.raises(StudioError) as info:
        read_recommended(write(tmp_path, data))
    assert SETTINGS_FILE in str(info.value) and "\n" not in str(info.value)


def test_not_json_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / SETTINGS_FILE).write_text("{nope", encoding="utf-8")
    with pytest.raises(StudioError, match="not valid JSON"):
        read_recommended(tmp_path)


def test_cli_uses_the_models_recommendation_unless_given(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    write(model, {"recommended": {"guidance_scale": 4.0, "steps": 12, "fidelity": 0.8}})
    parser = build_parser()
    args = parser.parse_args(["stroke", "--model", str(model), "--strokes", "x.png", "--prompt", "p", "--out", "o.png"])
    apply_recommended(args)
    assert (args.steps, args.cfg, args.fidelity) == (12, 4.0, 0.8)
    args = parser.parse_args(["txt2img", "--model", str(model), "--prompt", "p", "--out", "o.png",
                              "--steps", "3", "--cfg", "9"])
    apply_recommended(args)
    assert (args.steps, args.cfg) == (3, 9.0)
    args = parser.parse_args(["txt2img", "--model", str(tiny_model_dir), "--prompt", "p", "--out", "o.png"])
    apply_recommended(args)
    assert (args.steps, args.cfg) == (DEFAULT_STEPS, DEFAULT_CFG)
    assert recommended_for(str(model)).steps == 12
