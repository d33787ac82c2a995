"""``attnlib bench`` end to end on tiny sizes, its skip rules and its memory measurement."""

from __future__ import annotations

import json

import pytest

from attnlib import bench, cli

TINY = ["-L", "64", "128", "-B", "1", "-H", "2", "-D", "16", "--repeats", "1", "--warmup", "0", "--device", "cpu"]


def test_bench_runs_end_to_end_and_writes_json_and_plot(tmp_path, capsys):
    out_json, out_png = tmp_path / "bench.json", tmp_path / "bench.png"
    code = cli.run(["bench", *TINY, "--no-memory", "--json", str(out_json), "--plot", str(out_png)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "x SDPA speed" in printed and "chunked" in printed and "flash-mm" in printed
    assert "What bounds the tiled PyTorch path" in printed and "outside them" in printed
    results = json.loads(out_json.read_text())
    rows = results["results"]
    assert [(r["L"], r["impl"]) for r in rows] == [(L, i) for L in (64, 128) for i in bench.IMPLS]
    assert results["machine"]["matmul_gflops"] > 0
    assert len(results["machine"]["loadavg"]) == 2
    for r in rows:
        if r["impl"] == "triton":  # timed on CUDA only
            assert r["status"] == "skipped" and "CUDA" in r["reason"], r
            continue
        assert r["status"] == "ok", r
        assert r["median_s"] > 0 and r["gflops"] > 0
        if r["impl"] == "flash-mm":  # not attention: no error to report
            assert r["max_err"] is None and "not attention" in r["note"]
        else:
            assert r["max_err"] < 1e-5, r
    assert [(b["mode"], b["L"]) for b in results["bounds"]] == [("full", 64), ("full", 128)]
    for b in results["bounds"]:
        assert b["matmul_share"] > 0 and b["flash_vs_sdpa"] > 0 and b["matmul_floor_vs_sdpa"] > 0
    assert all(r["speed_vs_sdpa"] == 1.0 for r in rows if r["impl"] == "sdpa")
    assert out_png.read_bytes()[:4] == b"\x89PNG"


def test_bench_backward_and_causal(tmp_path):
    out_json = tmp_path / "b.json"
    args = ["bench", *TINY, "--no-memory", "--backward", "--causal", "--impls", "chunked", "flash", "sdpa", "numpy"]
    assert cli.run([*args, "--json", str(out_json)]) == 0
    rows = {(r["L"], r["impl"]): r for r in json.loads(out_json.read_text())["results"]}
    assert rows[64, "numpy"]["status"] == "skipped" and "no backward" in rows[64, "numpy"]["reason"]
    assert rows[128, "chunked"]["status"] == "ok" and rows[128, "chunked"]["max_err"] < 1e-5
    assert rows[128, "flash"]["status"] == "ok" and rows[128, "flash"]["max_err"] < 1e-5
    assert {r["mode"] for r in rows.values()} == {"causal"}


def test_bench_runs_both_masks_in_one_run_with_ratios_to_sdpa_of_the_same_mask(tmp_path, capsys):
    out_json = tmp_path / "m.json"
    args = ["bench", *TINY, "--no-memory", "--modes", "full", "causal", "--impls", "flash", "flash-mm", "sdpa"]
    assert cli.run([*args, "--json", str(out_json)]) == 0
    table = capsys.readouterr().out
    assert "causal" in table and "full" in table
    results = json.loads(out_json.read_text())
    assert results["config"]["modes"] == ["full", "causal"]
    rows = {(r["mode"], r["L"], r["impl"]): r for r in results["results"]}
    assert len(rows) == 2 * 2 * 3
    for mode in ("full", "causal"):
        flash, sdpa = rows[mode, 128, "flash"], rows[mode, 128, "sdpa"]
        assert flash["speed_vs_sdpa"] == sdpa["median_s"] / flash["median_s"]
        assert flash["max_err"] < 1e-5
    assert len(results["bounds"]) == 4


def test_bounds_are_read_from_the_timings():
    rows = [
        {"mode": "full", "L": 4096, "impl": "flash", "status": "ok", "median_s": 2.0},
        {"mode": "full", "L": 4096, "impl": "flash-mm", "status": "ok", "median_s": 1.5},
        {"mode": "full", "L": 4096, "impl": "sdpa", "status": "ok", "median_s": 1.2},
        {"mode": "causal", "L": 4096, "impl": "flash", "status": "ok", "median_s": 1.0},
        {"mode": "causal", "L": 4096, "impl": "sdpa", "status": "ok", "median_s": 0.5},
    ]
    b = bench.bounds(rows)
    assert b[0] == {
        "mode": "full",
        "L": 4096,
        "flash_vs_sdpa": pytest.approx(0.6),
        "matmul_share": pytest.approx(0.75),
        "matmul_floor_vs_sdpa": pytest.approx(0.8),
    }
    assert b[1] == {"mode": "causal", "L": 4096, "flash_vs_sdpa": 0.5}
    text = bench.format_bounds(b)
    assert "flash 0.60x SDPA; its matmuls alone (flash-mm) take 75% of its time, 25% is outside them" in text
    assert "it would be 0.80x SDPA" in text and "noise" not in text
    noisy = bench.format_bounds([dict(b[0], matmul_share=1.2)])
    assert "over 100%: noise dominates this run" in noisy


def test_bench_skips_what_does_not_fit_and_says_why(capsys):
    args = ["bench", *TINY, "--no-memory", "--memory-fraction", "1e-9", "--reference-max-len", "64"]
    assert cli.run(args) == 0
    table = capsys.readouterr().out
    assert "skipped" in table and "GiB budget" in table
    parser = cli.build_parser(["bench"])
    ns = parser.parse_args(["bench", *TINY, "--reference-max-len", "64"])
    spec = dict(vars(ns), L=128, device="cpu", reference_max_len=64)
    assert "--reference-max-len" in bench._skip_reason("numpy", spec, budget=10**12)
    assert bench._skip_reason("chunked", spec, budget=10**12) is None


def test_memory_estimates_scale_as_expected():
    def est(impl, L):
        return bench.estimate_bytes(impl, 4, 8, L, L, 64, 4)

    # the math path at L = 8192 needs more than 16 GiB; the chunked path grows linearly
    assert est("math", 8192) > 16 * 2**30
    assert est("math", 8192) / est("math", 4096) > 3.5
    assert est("chunked", 16384) / est("chunked", 8192) < 2.1
    assert est("flash", 16384) / est("flash", 8192) < 2.1
    assert bench.attention_flops(4, 8, 1024, 1024, 64) == 4 * 4 * 8 * 1024 * 1024 * 64


@pytest.mark.skipif(not bench.os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc peak-RSS reset")
def test_memory_measurement_sees_the_math_paths_score_matrices():
    """A fresh child process measures the peak extra RSS: the math path must show its (L, S) scores."""
    spec = {
        "batch": 1,
        "heads": 4,
        "head_dim": 16,
        "dtype": "float32",
        "device": "cpu",
        "block_q": 128,
        "block_k": 256,
        "causal": False,
        "backward": False,
        "seed": 0,
        "L": 1024,
    }
    scores = 4 * 1024 * 1024 * 4  # one fp32 (1, 4, 1024, 1024) tensor: 16 MiB
    math_bytes = bench.measure_peak_extra_bytes("math", spec)
    chunked_bytes = bench.measure_peak_extra_bytes("chunked", spec)
    assert math_bytes >= 2 * scores
    assert chunked_bytes < scores


def test_bad_arguments_give_a_usage_error(capsys):
    assert cli.run(["bench", "-L", "0", "--no-memory"]) == 2
    assert "--lengths" in capsys.readouterr().err


def test_markdown_summary_reads_ratios_memory_and_skips_from_the_results():
    results = {
        "config": {
            "lengths": [4096],
            "batch": 4,
            "heads": 8,
            "head_dim": 64,
            "dtype": "float32",
            "device": "cpu",
            "block_q": 256,
            "block_k": 512,
            "repeats": 3,
            "backward": False,
            "causal": False,
        },
        "machine": {"matmul_gflops": 300.0, "torch": "2.13.0+cpu", "threads": 2, "cpu_count": 2},
        "results": [
            {
                "L": 4096,
                "impl": "math",
                "status": "skipped",
                "reason": "needs ~6.1 GiB > 5.5 GiB budget (--memory-fraction)",
            },
            {
                "L": 4096,
                "impl": "chunked",
                "status": "ok",
                "median_s": 1.5,
                "peak_extra_mib": 96.0,
                "speed_vs_sdpa": 0.5,
                "mem_vs_sdpa": 3.0,
            },
            {
                "L": 4096,
                "impl": "sdpa",
                "status": "ok",
                "median_s": 0.75,
                "peak_extra_mib": 32.0,
                "speed_vs_sdpa": 1.0,
                "mem_vs_sdpa": 1.0,
            },
            {
                "L": 4096,
                "impl": "flash",
                "status": "ok",
                "median_s": 1.0,
                "peak_extra_mib": 64.0,
                "speed_vs_sdpa": 0.75,
                "mem_vs_sdpa": 2.0,
            },
            {"L": 4096, "impl": "flash-mm", "status": "ok", "median_s": 0.6, "peak_extra_mib": None},
        ],
    }
    table = bench.markdown_summary(results)
    assert "forward: B=4, H=8, D=64, float32, cpu (2 threads on 2 CPUs), torch 2.13.0" in table
    row = table.splitlines()[-1]
    assert row == (
        "| 4096 | 750 ms | 1.50 s | 0.50x | 1.00 s | 0.75x | 60% | - | 32 MiB | 64 MiB "
        "| skipped: needs ~6.1 GiB > 5.5 GiB budget |"
    )


def test_an_implementation_is_one_record(monkeypatch):
    """Adding an implementation is one Implementation record: the call, the memory estimate, the skip reason and
    the --impls help all come from it."""
    import torch

    assert bench.IMPLS == tuple(bench.IMPLEMENTATIONS)
    for r in bench.IMPLEMENTATIONS.values():
        assert r.summary and (r.forward is None) != (r.call is None), r.name
    fake = bench.Implementation(
        "double-v",
        "returns 2 v (a test record)",
        extra_bytes=lambda B, H, L, S, D, itemsize, backward: 12345,
        forward=lambda spec: lambda q, k, v: 2 * v,
        skip=lambda spec: "too long" if spec["L"] > 8 else None,
    )
    monkeypatch.setitem(bench.IMPLEMENTATIONS, "double-v", fake)
    v = torch.ones(1, 1, 4, 2)
    spec = dict(causal=False, backward=True, L=4, batch=1, heads=1, head_dim=2, dtype="float32")
    out = bench.make_call("double-v", spec, v, v, v, torch.ones_like(v))()
    assert torch.equal(out, 2 * v)
    assert bench.estimate_bytes("double-v", 1, 1, 4, 4, 2, 4) == 3 * 4 * 2 * 4 + 12345
    assert bench._skip_reason("double-v", dict(spec, L=16), budget=10**12) == "too long"
    assert bench._skip_reason("double-v", spec, budget=10**12) is None
