"""bench_gpu: refuses politely without CUDA, and its smoke run (tiny shapes, CPU) fills every section."""
from __future__ import annotations

import json

import torch

from bench import bench_gpu


def test_without_cuda_it_says_so_in_one_line(monkeypatch, capsys, tmp_path) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench_gpu.main(["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "needs a CUDA GPU" in err and "--smoke" in err
    assert not list(tmp_path.iterdir())  # nothing written


def test_the_smoke_run_fills_every_section(tmp_path, capsys) -> None:
    assert bench_gpu.main(["--smoke", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "gpu.json").read_text())
    r = report["results"]
    assert r["text_to_image"]["images_per_second"] > 0
    assert set(r["panorama"]["speedup_vs_best_diffusers"]) == {"ours exact", "ours shifted windows"}
    assert set(r["regions"]["seconds"]) == {"text-to-image", "regions exact", "regions fast", "regions one pass"}
    assert set(r["stroke"]["seconds"]) == {"text-to-image", "GradOP+", "GradOP+ fast"}
    md = (tmp_path / "gpu.md").read_text()
    for title in ("## Text-to-image", "## Panorama", "## 3 regions", "## Stroke guidance", "## Peak memory"):
        assert title in md
