"""The GPU benchmark must stay runnable for the sessions that get a GPU: run it in --tiny mode here."""

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_gpu_benchmark_runs_end_to_end_in_tiny_mode(tmp_path):
    out = tmp_path / "gpu.json"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_gpu.py"), "--tiny", "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["tiny"] is True and result["ceilings"]["matmul_tflops"] > 0
    assert result["encoder"]["passages_per_s"] > 0 and result["encoder"]["max_relative_error_vs_fp32"] < 1e-5
    for label in ("forced 32 tokens", "20 tokens (realistic average)"):
        assert result["generator"][label]["outputs_valid"] is True
    assert result["use"]["sentences_per_s_fp32"] > 0 and result["train_step"]["examples_per_s"] > 0
    ivf = result["ivf_training"]  # both k-means reach a comparable objective on the same data
    assert ivf["torch_s"] > 0 and abs(ivf["mse_torch"] - ivf["mse_faiss_cpu"]) < 0.05 * ivf["mse_faiss_cpu"]
    build = result["index_build"]  # the build job's calls; the GPU columns only where faiss has GPUs
    assert build["faiss_gpus"] == 0 and build["train_s_cpu"] > 0 and build["adds_per_s_cpu"] > 0


@pytest.mark.slow
def test_validation_benchmark_runs_in_tiny_mode_and_finds_what_was_planted(tmp_path):
    out = tmp_path / "validation.json"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_validation.py"), "--tiny", "--json",
                           str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    (size,) = result["sizes"]
    assert [r["cpus"] for r in size["ray"]] == [1, 2]
    for r in size["ray"]:  # the script itself checks the counts against the planted rows; here the report
        assert r["passages"] == 2000 and r["rejects"]["duplicate id"] == size["planted"]["duplicates"] == 300
        assert r["peak_rss_mib"]["validate_unit"] > 0 and r["rows_per_s"] > 0
    assert "| 2,000 |" in done.stdout


@pytest.mark.slow
def test_scale_benchmark_runs_the_whole_path_in_tiny_mode(tmp_path):
    """20,000 passages through `xdr index` (killed once 1 of 2 parts is embedded, and rerun), `xdr build-index`
    and `xdr serve`, with the benchmark's own checks."""
    out = tmp_path / "scale.json"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_scale.py"), "--tiny", "--resume-at",
                           "20000", "--workdir", str(tmp_path / "work"), "--json", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    (size,) = json.loads(out.read_text())["sizes"]
    assert size["checks"] and all(size["checks"].values()), size["checks"]
    assert size["resume"]["killed"] and 1 <= size["resume"]["parts_done"] < 3  # of 3 parts (the 3rd: rejects)
    assert size["index_job"]["counts"]["validation_resumed"] is True
    assert size["serve"]["clients_8"]["questions"] == 40 and size["serve"]["clients_1"]["p50_ms"] > 0
    assert size["build"]["vectors"] == 20_000 and "| 20,000 |" in done.stdout


def test_plot_and_sizing_scripts_run_on_the_recorded_scale_json(tmp_path):
    """The commands docs/BENCHMARKS.md gives after a scale run, on its recorded JSON."""
    scale = REPO / "docs" / "bench-scale-2026-11-30.json"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "plot_scale.py"), str(scale),
                           str(tmp_path / "scale.png")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "scale.png").stat().st_size > 10_000
    assert "| stage | 1,000,000 | 4,500,000 | 18,000,000 |" in done.stdout
    out = tmp_path / "sizing.json"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "sizing.py"), "--scale", str(scale),
                           "--stage-passages", "300", "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    sizing = json.loads(out.read_text())
    big = max(json.loads(scale.read_text())["sizes"], key=lambda r: r["passages"])
    tasks = big["resume"]["first_attempt"]["cpu_s"]  # the validation tasks' CPU seconds, added up here
    expected = sum(tasks[t] for t in ("validate_unit", "find_duplicates", "cut_unit", "assemble_part")) / 18e6
    assert sizing["validation_cpu_s_per_passage"] == pytest.approx(expected)
    assert sizing["plan"]["1000000000"]["validation_cpu_hours"] == pytest.approx(1e9 * expected / 3600, abs=0.05)
    assert sizing["stage_cost"]["passages"] == 300 and sizing["stage_cost"]["queries"] == 300 * 35
