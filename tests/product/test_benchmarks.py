"""Benchmark and experiment scripts stay runnable (the GPU benchmark for the sessions that get a GPU): each runs here
in a tiny mode."""

import json
import re
import subprocess
import sys

import pytest
import torch

from tests.support.paths import REPO
from xdr.index.build import faiss_gpus


@pytest.mark.slow
def test_gpu_benchmark_runs_end_to_end_in_tiny_mode(tmp_path):
    out = tmp_path / "gpu.json"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_gpu.py"), "--tiny", "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["tiny"] is True and result["ceilings"]["matmul_tflops"] > 0
    # the fast path against fp32 on the same weights: the same fp32 on a CPU; bfloat16 (8 mantissa bits) on a GPU
    on_gpu = torch.cuda.is_available()
    assert result["encoder"]["dtype"] == ("torch.bfloat16" if on_gpu else "torch.float32"), result["encoder"]
    assert result["encoder"]["passages_per_s"] > 0
    assert result["encoder"]["max_relative_error_vs_fp32"] < (0.05 if on_gpu else 1e-5), result["encoder"]
    for label in ("forced 32 tokens", "20 tokens (realistic average)"):
        assert result["generator"][label]["outputs_valid"] is True
    assert result["use"]["sentences_per_s_fp32"] > 0 and result["train_step"]["examples_per_s"] > 0
    ivf = result["ivf_training"]  # both k-means reach a comparable objective on the same data
    assert ivf["torch_s"] > 0 and abs(ivf["mse_torch"] - ivf["mse_faiss_cpu"]) < 0.05 * ivf["mse_faiss_cpu"]
    build = result["index_build"]  # the build job's calls; the GPU columns only where faiss has GPUs
    assert build["faiss_gpus"] == faiss_gpus() and build["train_s_cpu"] > 0 and build["adds_per_s_cpu"] > 0
    assert ("adds_per_s_gpu" in build) == (faiss_gpus() > 0), build


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
    """20,000 passages through `xdr index` (parts of 1,000, killed once half are embedded, and rerun), `xdr
    build-index` and `xdr serve`, with the benchmark's own checks; the kill must leave parts to the rerun."""
    out = tmp_path / "scale.json"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_scale.py"), "--tiny", "--resume-at",
                           "20000", "--workdir", str(tmp_path / "work"), "--json", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    (size,) = json.loads(out.read_text())["sizes"]
    assert size["checks"] and all(size["checks"].values()), size["checks"]
    assert {"served_hits_equal_brute_force", "served_scores_are_true_scores", "rerun_skipped_the_committed_parts",
            "rerun_embedded_new_parts", "resumed_parts_equal_recomputed"} <= set(size["checks"]), size["checks"]
    counts = size["index_job"]["counts"]
    assert size["resume"]["killed"] and 1 <= size["resume"]["parts_done"] <= counts["parts"] - 2, size["resume"]
    assert 1 <= counts["parts_resumed"] == size["resume"]["committed"] < counts["parts"], (size["resume"], counts)
    assert counts["validation_resumed"] is True
    exact = size["serve"]["served_vs_exact"]  # IVF16,Flat probing all 16 lists: the exact top 10
    assert exact["recall_at_k"] == 1.0 and exact["questions"] == 20 and exact["max_score_error"] < 1e-3, exact
    assert size["serve"]["clients_8"]["questions"] == 40 and size["serve"]["clients_1"]["p50_ms"] > 0
    assert size["build"]["vectors"] == 20_000 and "| 20,000 |" in done.stdout


def test_plot_and_sizing_scripts_run_on_the_recorded_scale_json(tmp_path):
    """The commands docs/results/benchmarks.md gives after a scale run, on its recorded JSON."""
    scale = REPO / "docs" / "results" / "data" / "bench-scale-2026-11-30.json"
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


def test_the_dictionary_script_writes_muse_files_whose_held_out_precision_is_recomputed_here(tmp_path):
    """`derive_xquad_dictionary.py` on one language pair (every step; seconds): its files load as xdr's
    code-switching dictionaries, and the precision it reports is recomputed here from the files alone."""
    from tests.support.paths import SHARED_DATA
    from xdr.io.storage import Storage
    from xdr.train.codeswitch import load_muse
    from xdr.train.data import load_xquad

    out = tmp_path / "dictionaries"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "derive_xquad_dictionary.py"), "--languages",
                           "en", "de", "--out", str(out), "--json", str(tmp_path / "d.json")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["de-en.txt", "en-de.txt"]
    dictionary = load_muse(Storage(), [str(out / "en-de.txt")])
    assert dictionary.rejected_lines == 0 and len(dictionary.entries["en"]) > 100
    en_de = {word: translations[0][1] for word, translations in dictionary.entries["en"].items()}
    held, _ = load_xquad(Storage(), str(SHARED_DATA / "xquad"), languages=("en", "de"), articles=range(29, 49))
    hits = uses = 0
    for item in held.items:  # a dictionary word in the English question: is its translation in the German one?
        en, de = (set(re.findall(r"\w+", item.question[x].lower())) for x in ("en", "de"))
        for word in en & en_de.keys():
            uses, hits = uses + 1, hits + (en_de[word] in de)
    row = json.loads((tmp_path / "d.json").read_text())["pairs"]["en-de"]
    assert row["entries"] == len(en_de) and row["held_out_uses"] == uses
    assert row["precision"] == pytest.approx(hits / uses) and row["precision"] > 10 * row["chance_precision"]


@pytest.mark.slow
def test_the_generator_experiment_runs_in_tiny_mode_on_the_shared_ray(tmp_path, ray_local):
    """`exp_qg_xquad.py --tiny`: tokenizer, model, the train-generator job (on this session's Ray), the
    held-out generation and its scores."""
    out = tmp_path / "qg.json"
    address = ray_local.get_runtime_context().gcs_address
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "exp_qg_xquad.py"), "--tiny", "--address",
                           address, "--out", str(tmp_path / "qg"), "--json", str(out), "--md", str(tmp_path / "qg.md")],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    manifest = result["manifest"]
    assert manifest["steps"] == 4 and [step for step, _ in manifest["val_losses"]] == [2, 4]
    assert manifest["val_losses"][1][1] < manifest["val_losses"][0][1]  # 4 steps lower the held-out loss
    tables = {name: result["results"][name]["table"] for name in ("untrained", "trained")}
    assert tables["trained"] != tables["untrained"]  # the trained weights write other questions
    for table in tables.values():  # 4 steps cannot make a 16-wide model good: the full run compares scores
        languages = [x for x in table if x != "avg"]
        assert len(languages) == 11 and [x for x in languages if table[x]["f1"] is None] == ["th", "zh"]
        assert table["avg"]["chrf"] == pytest.approx(sum(table[x]["chrf"] for x in languages) / 11)
        assert table["avg"]["f1"] == pytest.approx(sum(table[x]["f1"] or 0 for x in languages) / 9)
    assert "| avg |" in (tmp_path / "qg.md").read_text()


def test_token_f1_is_squad_style_overlap():
    sys.path.insert(0, str(REPO / "benchmarks"))
    from exp_qg_xquad import token_f1

    assert token_f1("Who wrote it?", "who wrote this") == pytest.approx(2 / 3)  # 2 shared of 3 and 3 tokens
    assert token_f1("a a b", "a c") == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))  # p 1/3, r 1/2
    assert token_f1("x", "y") == 0


@pytest.fixture(scope="module")
def serve_work(tmp_path_factory):
    """The serve benchmark's work folder: the demo index it builds there serves the profile test too."""
    return tmp_path_factory.mktemp("serve-work")


@pytest.mark.slow
def test_serve_benchmark_runs_every_default_path_side_by_side_in_tiny_mode(tmp_path, serve_work):
    """bench_serve.py --tiny: the demo index built, then the library, the uvicorn app, Serve's floor and
    `xdr serve` under wrk, on the haproxy ingress (`xdr serve`'s default; Serve's defaults are what
    tests/jobs/test_serve.py runs). Every HTTP path answers every question as the library does, without an error,
    and the ratio table is there."""
    out = tmp_path / "serve.json"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_serve.py"), "--tiny", "--work",
                           str(serve_work), "--json", str(out)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    rows = {(r["path"], r.get("serve_settings")): r for r in result["rows"]}
    assert set(rows) == {("library", None), ("uvicorn", None), ("serve-noop", "haproxy"), ("xdr", "haproxy")}
    for (path, _), row in rows.items():
        assert row["answers_match"] is (None if path == "serve-noop" else True), row
        assert all(lv["qps"] > 0 and lv["errors"] == 0 and lv["ok"] > 0 for lv in row["levels"]), row
    assert [lv["clients"] for lv in rows[("xdr", "haproxy")]["levels"]] == [1, 4]
    ratio = {(r["path"], r["serve_settings"], r["clients"]): r for r in result["ratios"]}
    xdr, floor = rows[("xdr", "haproxy")]["levels"][1], rows[("serve-noop", "haproxy")]["levels"][1]
    assert ratio[("xdr", "haproxy", 4)]["vs_serve_floor"] == round(xdr["qps"] / floor["qps"], 2)
    assert "× Serve floor" in done.stdout


@pytest.mark.slow
def test_serve_profile_runs_on_the_demo_index(tmp_path, serve_work):
    """profile_serve.py as docs/results/benchmarks.md gives it, at one client for 2 s: the Router's CPU per request
    is counted and its py-spy samples are sorted, encoding among them."""
    build = ("import sys; from pathlib import Path; sys.path.insert(0, 'benchmarks'); import bench_serve; "
             f"print(bench_serve.demo_index(Path({str(serve_work)!r})))")  # built by the benchmark test if it ran
    made = subprocess.run([sys.executable, "-c", build], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert made.returncode == 0, made.stderr[-3000:]
    index, out = made.stdout.strip().splitlines()[-1], tmp_path / "profile.json"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "profile_serve.py"), "--index", index,
                           "--ingress", "haproxy", "--clients", "1", "--duration", "2", "--json", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (level,) = json.loads(out.read_text())["levels"]
    assert level["qps"] > 0 and level["cpu_ms_per_request"]["Router replica"] > 0
    assert level["router_work"] and level["router_work"].get("encode", 0) > 0
    assert abs(sum(level["router_work"].values()) - 1) < 0.01


@pytest.mark.slow
def test_reindex_benchmark_runs_in_tiny_mode_and_the_reuse_run_equals_the_full_run(tmp_path, ray_local):
    """bench_reindex.py --tiny: version 1, version 2 in full and with reuse (its outputs equal the full run's,
    byte for byte), and version 2's index rebuilt and refreshed on version 1's quantizer. Its six jobs join
    this session's Ray (--address) rather than start one each."""
    import pyarrow.parquet as pq

    out, work = tmp_path / "reindex.json", tmp_path / "work"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_reindex.py"), "--tiny", "--workdir",
                           str(work), "--json", str(out), "--address", ray_local.get_runtime_context().gcs_address],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["checks"] == {"reuse_equals_full": True}
    old, new = ({r["id"]: (r["title"], r["text"]) for r in pq.read_table(work / run / "passages").to_pylist()}
                for run in ("run-v1", "run-full"))
    recomputed = sum(1 for pid, content in new.items() if old.get(pid) != content)  # changed and added
    reuse = result["index"]["reuse"]
    assert reuse["counts"]["passages_generated"] == reuse["counts"]["passages_encoded"] == recomputed
    assert reuse["reuse"]["dropped"] == sum(1 for pid in old if pid not in new) > 0
    assert result["summary"]["model_calls_ratio"] == round(recomputed / len(new), 4) < 0.08
    rebuild, refresh = result["build"]["rebuild"], result["build"]["refresh"]
    assert refresh["refresh"]["rebuild_advised"] is False
    assert refresh["timings"]["train_s"] < rebuild["timings"]["train_s"]  # no k-means
    assert refresh["recall_at_10"] >= rebuild["recall_at_10"] - 0.05 and rebuild["recall_at_10"] > 0.3
    assert "| reuse run |" in done.stdout and "| refresh |" in done.stdout
