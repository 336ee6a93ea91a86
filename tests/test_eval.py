"""The eval command: procedural sets in memory, the attribute classifier, the CLI contract."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from training import eval as E
from training import procedural as P
from training.make_dataset import DatasetConfig, make_item


def test_render_set_is_deterministic_and_matches_make_dataset(tmp_path: Path) -> None:
    images, labels, captions = E.render_set(101, 4, 64)
    again, labels2, captions2 = E.render_set(101, 4, 64)
    assert images.shape == (4, 64, 64, 3) and images.dtype == np.uint8
    assert np.array_equal(images, again) and captions == captions2
    assert all(np.array_equal(labels[k], labels2[k]) for k in labels)
    assert not np.array_equal(images, E.render_set(202, 4, 64)[0])
    config = DatasetConfig(out=tmp_path, count=4, size=64, seed=101)
    for i in range(4):
        line = make_item(config, i)  # what make_dataset writes for item i
        written = cv2.cvtColor(cv2.imread(str(tmp_path / line["file_name"])), cv2.COLOR_BGR2RGB)
        assert np.array_equal(written, images[i])
        assert captions[i] == line["text"]
        scene = P.sample_scene(line["seed"])
        expected = P.scene_labels(scene, line["style"])
        assert P.STYLES[labels["style"][i]] == expected["style"] == line["style"]
        assert P.TIMES[labels["time"][i]] == expected["time"] == line["time"]
        assert dict(zip(E.OBJECTS, labels["objects"][i].tolist())) == expected["objects"] == line["labels"]
    small, _, _ = E.render_set(101, 2, 64, resize_to=32)
    assert small.shape == (2, 32, 32, 3)


def test_classifier_beats_chance_on_held_out_scenes() -> None:
    train_x, train_y, _ = E.render_set(E.TRAIN_DATA_SEED, 300, 64)
    test_x, test_y, _ = E.render_set(E.HELDOUT_DATA_SEED, 100, 64)
    net = E.train_classifier(train_x, train_y, epochs=6, seed=0, input_size=64)
    result = E.evaluate(net, test_x, test_y)
    # chance: style 20%, time 33% (majority class ~45%); measured ~85% and ~97%
    assert result["style"] >= 0.6, result
    assert result["time"] >= 0.7, result
    assert result["count"] == 100 and set(result["per_object"]) == set(E.OBJECTS)
    assert np.sum(result["style_confusion"]) == 100


def test_classifier_training_is_deterministic_by_seed() -> None:
    x, y, _ = E.render_set(E.TRAIN_DATA_SEED, 24, 32)
    a, b, c = (E.train_classifier(x, y, epochs=1, seed=s, input_size=32, batch_size=8) for s in (3, 3, 4))
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.heads.weight, c.heads.weight)


def test_evaluate_counts_per_label(monkeypatch: pytest.MonkeyPatch) -> None:
    truth = {"style": np.array([0, 1, 2, 3]), "time": np.array([0, 0, 1, 2]),
             "objects": np.zeros((4, len(E.OBJECTS)), bool)}
    pred = {"style": np.array([0, 1, 2, 4]), "time": np.array([0, 1, 1, 2]),
            "objects": np.zeros((4, len(E.OBJECTS)), bool)}
    pred["objects"][:, 0] = True  # "sun" always wrong, every other label right
    monkeypatch.setattr(E, "predict", lambda net, images: pred)
    result = E.evaluate(None, np.zeros((4, 8, 8, 3), np.uint8), truth)
    assert result["style"] == 0.75 and result["time"] == 0.75
    assert result["per_object"]["sun"] == 0.0 and result["per_object"]["moon"] == 1.0
    assert result["objects"] == pytest.approx(1 - 1 / len(E.OBJECTS))
    assert result["style_confusion"][3][4] == 1 and result["time_confusion"][0][1] == 1


def test_cli_end_to_end_on_a_tiny_model(tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "results" / "eval"
    code = E.main(["--model", str(tiny_model_dir), "--count", "3", "--train-count", "16", "--vae-train-count", "4",
                   "--epochs", "1", "--size", "64", "--input-size", "32", "--steps", "2", "--quiet",
                   "--out", str(out)])
    stdout = capsys.readouterr().out
    assert code == 0
    report = json.loads((tmp_path / "results" / "eval.json").read_text())
    markdown = (tmp_path / "results" / "eval.md").read_text()
    names = [name for _, name in E.ROWS]
    assert [row["name"] for row in report["rows"]] == names
    assert all(row["count"] == 3 and 0 <= row["style"] <= 1 for row in report["rows"])
    assert report["data"]["train_data_seed"] == 101 and report["data"]["heldout_data_seed"] == 202
    assert report["data"]["classifier_train_images"] == 20 and len(report["prompts"]) == 3
    assert report["config"]["steps"] == 2 and report["model"] == str(tiny_model_dir.resolve())
    assert {"classifier_train", "generate", "vae", "render"} <= set(report["timings"])
    assert all(f"| {name} |" in markdown for name in names) and stdout == markdown


@pytest.mark.parametrize("args, message", [
    (["--count", "0"], "--count must be at least 1"),
    (["--train-count", "5"], "--train-count must be at least 10"),
    (["--size", "100"], "--size 100 is not a multiple of 8: use 96 or 104"),
    (["--steps", "0"], "Steps must be between"),
    (["--model", "{tmp}/nothing-here"], "not found"),
    (["--out", "{tmp}/a-file/r"], "Cannot create the output folder"),
])
def test_cli_user_errors_exit_2_with_one_line(tiny_model_dir: Path, tmp_path: Path, capsys, args, message) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    args = [a.format(tmp=tmp_path) for a in args]
    model = [] if "--model" in args else ["--model", str(tiny_model_dir)]
    code = E.main([*model, "--quiet", "--out", str(tmp_path / "r"), *args])
    stderr = capsys.readouterr().err
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], stderr
    assert not list(tmp_path.glob("r.*"))


def test_cli_unknown_flag_exits_2(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        E.main(["--bogus"])
    assert exit_info.value.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1
