"""bench/gpu.py (the GPU benchmark run with the device tool) parses its arguments, prints its plan with
`--dry-run`, and its whole path runs on the CPU with tiny models (`--device cpu --tiny`): ours and diffusers' on
the same modules, a table of ratios, the JSON figures."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def gpu_bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "bench" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_gpu"] = module  # (its dataclasses look their module up)
    spec.loader.exec_module(module)
    return module


def test_dry_run_prints_the_plan(gpu_bench, capsys):
    assert gpu_bench.main(["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "sd15 512x512 fp16: diffusers default compile graphs medvram lowvram fp8" in out
    assert "sdxl 1024x1024 bf16:" in out
    with pytest.raises(SystemExit):
        gpu_bench.build_parser().parse_args(["--families", "sd3"])


def test_the_smoke_path_runs_on_the_cpu(gpu_bench, tmp_path, capsys):
    figures = tmp_path / "figures.json"
    code = gpu_bench.main(["--device", "cpu", "--tiny", "--families", "sd15", "--dtypes", "fp32", "--modes",
                           "diffusers", "default", "--steps", "1", "--repeats", "1", "--out", str(tmp_path),
                           "--json", str(figures)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "| sd15 | fp32 | diffusers |" in out and "| sd15 | fp32 | default |" in out
    data = json.loads(figures.read_text())
    by_variant = {r["variant"]: r for r in data["results"]}
    assert set(by_variant) == {"diffusers", "default"}
    for result in by_variant.values():
        assert result["error"] is None and result["s_per_image"] > 0 and result["it_per_s"] > 0
    # Our image is compared with the default's of the same seed (itself here: no difference).
    assert by_variant["default"]["levels_vs_default"] == [0.0, 0]
    assert by_variant["diffusers"]["levels_vs_default"] is None
