"""``attnlib bench``: time and memory of attention implementations, side by side in one run.

For each length L (with S = L) it runs, interleaved (every repeat visits every implementation in turn, so a busy
machine slows all of them alike), the implementations of :data:`IMPLEMENTATIONS`: one :class:`Implementation`
record each (name, what it is, how to call it, its memory estimate, when it is skipped). ``attnlib bench --help``
lists them; SDPA (``torch.nn.functional.scaled_dot_product_attention``, PyTorch's fused kernels) is the yardstick.

``--modes full causal`` runs both masks in one run (``--causal`` is short for ``--modes causal``); every ratio is
to SDPA with the same mask, same length, same run.

Reported per implementation: median time, GFLOP/s (attention does 4·B·H·L·S·D flops forward; forward+backward is
counted as 3x that, the useful flops without recomputation), the percentage of the machine's matmul peak
(a large matmul measured in the same run), the peak extra memory of one call and the ratios to SDPA.

Peak memory: on the CPU each measurement runs once in a fresh child process, which resets the kernel's peak-RSS
mark (``/proc/self/clear_refs``) just before the call and reads ``VmHWM`` after it, so everything the call
allocates (torch, NumPy, BLAS buffers) is counted; on CUDA ``torch.cuda.max_memory_allocated``. Before running
anything the benchmark estimates each call's memory and skips, with the reason in the table, what would need
more than ``--memory-fraction`` (default 25%) of the memory available now.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

MODES = ("full", "causal")
DEFAULT_LENGTHS = [256, 512, 1024, 2048, 4096, 8192, 16384]
DTYPES = ("float32", "float64", "float16", "bfloat16")
MiB = 1 << 20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--lengths",
        "-L",
        type=int,
        nargs="+",
        default=DEFAULT_LENGTHS,
        metavar="L",
        help="sequence lengths L = S (default: %(default)s)",
    )
    parser.add_argument("--batch", "-B", type=int, default=4, help="batch size (default: %(default)s)")
    parser.add_argument("--heads", "-H", type=int, default=8, help="number of heads (default: %(default)s)")
    parser.add_argument("--head-dim", "-D", type=int, default=64, help="head dim (default: %(default)s)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="(default: %(default)s)")
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: attnlib.get_device())")
    parser.add_argument(
        "--block-q", type=int, default=512, help="chunked, flash: query block size (default: %(default)s)"
    )
    parser.add_argument(
        "--block-k", type=int, default=512, help="chunked, flash: key block size (default: %(default)s)"
    )
    parser.add_argument(
        "--scores-per-op",
        type=int,
        default=None,
        metavar="N",
        help="CPU: scores per op of the blocked core (attnlib.blocked.SCORES_PER_OP; default: its measured value)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per implementation (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls first (default: %(default)s)")
    parser.add_argument(
        "--impls",
        nargs="+",
        choices=IMPLS,
        default=list(IMPLS),
        help="implementations to run: " + "; ".join(f"{r.name}: {r.summary}" for r in IMPLEMENTATIONS.values()),
    )
    parser.add_argument("--backward", action="store_true", help="time forward + backward instead of forward")
    parser.add_argument("--causal", action="store_true", help="causal attention only (same as --modes causal)")
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=MODES,
        default=None,
        help="masks to run, each a block of the table (default: full)",
    )
    parser.add_argument(
        "--reference-max-len",
        type=int,
        default=1024,
        help="largest L for the (slow) NumPy reference (default: %(default)s)",
    )
    parser.add_argument(
        "--memory-fraction",
        type=float,
        default=0.25,
        help="never plan a call needing more than this fraction of available memory (default: 0.25)",
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="write all results as JSON")
    parser.add_argument("--plot", type=Path, default=None, metavar="PATH", help="write a time/memory plot (png, svg)")
    parser.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")


# --------------------------------------------------------------------------------------------------------------
# Pure helpers: flops, memory estimates, the table
# --------------------------------------------------------------------------------------------------------------


def attention_flops(B: int, H: int, L: int, S: int, D: int, *, backward: bool = False) -> float:
    """4·B·H·L·S·D for the forward (two matmuls of 2·L·S·D each), 3x that for forward + backward."""
    flops = 4.0 * B * H * L * S * D
    return 3.0 * flops if backward else flops


def estimate_bytes(impl: str, B: int, H: int, L: int, S: int, D: int, itemsize: int, *, backward: bool = False) -> int:
    """A deliberately generous estimate of the memory one call needs, inputs included (the record's own
    ``extra_bytes`` on top of q, k, v and, with ``backward``, their gradients)."""
    inputs = 3 * B * H * max(L, S) * D * itemsize * (2 if backward else 1)
    return int(inputs + IMPLEMENTATIONS[impl].extra_bytes(B, H, L, S, D, itemsize, backward))


def available_bytes(device) -> int:
    """Memory available now: free host RAM (psutil) on the CPU, free device memory on CUDA."""
    import torch

    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    import psutil

    return int(psutil.virtual_memory().available)


def format_table(rows: list[dict]) -> str:
    """The results as a fixed-width text table (one line per length and implementation)."""
    head = (
        f"{'mode':<6} {'L':>6} {'impl':<8} {'median':>10} {'GFLOP/s':>8} {'%peak':>6} {'extra MiB':>10} "
        f"{'x SDPA speed':>12} {'x SDPA mem':>10} {'max err':>8}  note"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        if r["status"] != "ok":
            lines.append(
                f"{r.get('mode', 'full'):<6} {r['L']:>6} {r['impl']:<8} {'skipped':>10} "
                f"{'':>8} {'':>6} {'':>10} {'':>12} {'':>10} {'':>8}  {r['reason']}"
            )
            continue

        def fmt(x, spec, missing="-"):
            return missing if x is None else format(x, spec)

        t = r["median_s"]
        time_s = f"{t * 1e3:.1f} ms" if t < 1 else f"{t:.2f} s"
        lines.append(
            f"{r.get('mode', 'full'):<6} {r['L']:>6} {r['impl']:<8} {time_s:>10} {r['gflops']:>8.1f} "
            f"{fmt(r['pct_peak'], '.1f'):>6} {fmt(r['peak_extra_mib'], '.1f'):>10} "
            f"{fmt(r['speed_vs_sdpa'], '.2f'):>12} {fmt(r['mem_vs_sdpa'], '.2f'):>10} "
            f"{fmt(r['max_err'], '.1e'):>8}  {r.get('note', '')}"
        )
    return "\n".join(lines)


def markdown_summary(results: dict) -> str:
    """The tiled paths against SDPA, one table per mask and one row per length, as markdown (the README's
    performance section).

    Everything in it is read from ``results`` (what :func:`run_benchmark` returned, or its JSON): times, the
    throughput ratios, the share of flash's time spent in its matmuls (``flash-mm`` / ``flash``), peak extra
    memory and why the math path was skipped where it was.
    """
    cfg, machine = results["config"], results["machine"]
    modes = cfg.get("modes") or (["causal"] if cfg["causal"] else ["full"])
    by = {(r.get("mode", modes[0]), r["L"], r["impl"]): r for r in results["results"]}
    kind = "forward + backward" if cfg["backward"] else "forward"

    def seconds(r):
        return (
            "-"
            if r is None or r["status"] != "ok"
            else (f"{r['median_s'] * 1e3:.0f} ms" if r["median_s"] < 1 else f"{r['median_s']:.2f} s")
        )

    def mib(r):
        return "-" if r is None or r.get("peak_extra_mib") is None else f"{r['peak_extra_mib']:.0f} MiB"

    def ratio(r, key="speed_vs_sdpa"):
        return "-" if r is None or r.get(key) is None else f"{r[key]:.2f}x"

    lines = []
    for mode in modes:
        if lines:
            lines.append("")
        lines += [
            f"{kind}{', causal' if mode == 'causal' else ''}: B={cfg['batch']}, H={cfg['heads']}, "
            f"D={cfg['head_dim']}, {cfg['dtype']}, {cfg['device']} ({machine['threads']} threads on "
            f"{machine['cpu_count']} CPUs), torch {machine['torch'].split('+')[0]}, blocks "
            f"{cfg['block_q']}x{cfg['block_k']}, median of {cfg['repeats']}; matmul peak measured in the same run: "
            f"{machine['matmul_gflops']:.0f} GFLOP/s"
            + (f", 1-minute load average {load[0]} to {load[1]}" if (load := machine.get("loadavg")) else ""),
            "",
            "| L = S | SDPA | chunked | chunked / SDPA | flash | flash / SDPA | flash's time in matmuls "
            "| triton / SDPA | extra memory, SDPA | extra memory, flash | math path |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for L in cfg["lengths"]:
            sdpa, chunked, flash, mm, triton, math_path = (
                by.get((mode, L, i)) for i in ("sdpa", "chunked", "flash", "flash-mm", "triton", "math")
            )
            if math_path is None:
                math_note = "not run"
            elif math_path["status"] != "ok":
                math_note = "skipped: " + math_path["reason"].split(" (")[0]
            else:
                math_note = f"{seconds(math_path)}, {mib(math_path)}"
            ok = flash is not None and mm is not None and flash["status"] == mm["status"] == "ok"
            share = f"{100 * mm['median_s'] / flash['median_s']:.0f}%" if ok else "-"
            lines.append(
                f"| {L} | {seconds(sdpa)} | {seconds(chunked)} | {ratio(chunked)} | {seconds(flash)} "
                f"| {ratio(flash)} | {share} | {ratio(triton)} | {mib(sdpa)} | {mib(flash)} | {math_note} |"
            )
    return "\n".join(lines)


def bounds(rows: list[dict]) -> list[dict]:
    """What bounds the tiled PyTorch path, measured: per (mode, L), flash against SDPA and against its own matmuls.

    ``matmul_share`` = time of ``flash-mm`` (the same loops with only the matmuls) / time of ``flash``: the part of
    flash's time that the block matmuls take; ``1 - matmul_share`` is spent outside them (max, exp2, sums,
    rescaling, masking, one elementwise pass after another over each score block). ``matmul_floor_vs_sdpa`` is
    what flash would reach against SDPA if that part cost nothing.
    """
    by = {(r.get("mode", "full"), r["L"], r["impl"]): r for r in rows if r["status"] == "ok"}
    out = []
    for mode, L in dict.fromkeys((r.get("mode", "full"), r["L"]) for r in rows):
        flash, mm, sdpa = (by.get((mode, L, i)) for i in ("flash", "flash-mm", "sdpa"))
        if flash is None or sdpa is None:
            continue
        entry = {"mode": mode, "L": L, "flash_vs_sdpa": sdpa["median_s"] / flash["median_s"]}
        if mm is not None:
            entry["matmul_share"] = mm["median_s"] / flash["median_s"]
            entry["matmul_floor_vs_sdpa"] = sdpa["median_s"] / mm["median_s"]
        out.append(entry)
    return out


def format_bounds(entries: list[dict]) -> str:
    """One line per (mode, L): the flash/SDPA ratio and where flash's time goes."""
    lines = []
    for b in entries:
        line = f"{b['mode']:<6} L={b['L']:>5}: flash {b['flash_vs_sdpa']:.2f}x SDPA"
        if "matmul_share" in b:
            line += (
                f"; its matmuls alone (flash-mm) take {100 * b['matmul_share']:.0f}% of its time, "
                f"{100 * (1 - b['matmul_share']):.0f}% is outside them (softmax bookkeeping); "
                f"with that free it would be {b['matmul_floor_vs_sdpa']:.2f}x SDPA"
            )
            if b["matmul_share"] > 1:  # a subset of the work took longer than all of it: the clock was disturbed
                line += " [over 100%: noise dominates this run; re-run on a quiet machine with more --repeats]"
        lines.append(line)
    return "\n".join(lines)


def plot_results(results: dict, path: Path) -> None:
    """Median time and peak extra memory against L, one line per implementation, log-log axes."""
    from .viz import new_figure

    fig, axes = new_figure(2, width=5.0, height=3.8)
    ax_t, ax_m = axes[0, 0], axes[0, 1]
    modes = results["config"].get("modes", ["full"])
    for mode, impl in [(m, i) for m in modes for i in results["config"]["impls"]]:
        ok = [
            r
            for r in results["results"]
            if r["impl"] == impl and r["status"] == "ok" and r.get("mode", "full") == mode and impl != "flash-mm"
        ]
        label = impl if len(modes) == 1 else f"{impl} ({mode})"
        if ok:
            ax_t.plot([r["L"] for r in ok], [r["median_s"] for r in ok], marker="o", label=label)
        mem = [r for r in ok if r["peak_extra_mib"] is not None]
        if mem:
            ax_m.plot([r["L"] for r in mem], [max(r["peak_extra_mib"], 0.1) for r in mem], marker="o", label=label)
    c = results["config"]
    mode = "forward+backward" if c["backward"] else "forward"
    for ax, ylabel in ((ax_t, "median time per call (s)"), (ax_m, "peak extra memory (MiB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length L = S")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        if ax.lines:
            ax.legend()
        else:
            ax.text(0.5, 0.5, "not measured", transform=ax.transAxes, ha="center", va="center")
    ax_t.set_title(f"{mode}, B={c['batch']} H={c['heads']} D={c['head_dim']} {c['dtype']} on {c['device']}")
    ax_m.set_title("memory one call adds")
    fig.savefig(path, dpi=110)


# --------------------------------------------------------------------------------------------------------------
# Running the implementations
# --------------------------------------------------------------------------------------------------------------


def _inputs(spec: dict):
    import torch

    g = torch.Generator().manual_seed(spec["seed"])
    dtype = getattr(torch, spec["dtype"])
    shape_q = (spec["batch"], spec["heads"], spec["L"], spec["head_dim"])
    q, k, v = (torch.randn(shape_q, generator=g).to(device=spec["device"], dtype=dtype) for _ in range(3))
    grad = torch.randn(shape_q, generator=g).to(device=spec["device"], dtype=dtype) if spec["backward"] else None
    return q, k, v, grad


def make_call(impl: str, spec: dict, q, k, v, grad) -> Callable[[], object]:
    """A zero-argument function that runs ``impl`` once (forward, or forward + backward) on q, k, v."""
    import torch

    record = IMPLEMENTATIONS[impl]
    if record.call is not None:  # runs itself (no autograd): the NumPy reference, the matmul floor
        return record.call(spec, q, k, v, grad)
    forward = record.forward(spec)
    if not spec["backward"]:

        def run_forward():
            with torch.no_grad():
                return forward(q, k, v)

        return run_forward
    leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]

    def run_backward():
        for t in leaves:
            t.grad = None
        out = forward(*leaves)
        out.backward(grad)
        return out.detach()

    return run_backward


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_matmul_gflops(device, dtype, repeats: int = 3) -> float:
    """Best GFLOP/s of a large square matmul: the machine's practical peak for this dtype."""
    import torch

    n = 8192 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = math.inf
    for _ in range(repeats + 1):
        _sync(device)
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best / 1e9


def _memory_child() -> None:
    """Entry point of the child process that measures one call's peak extra RSS (spec as JSON on stdin)."""
    spec = json.loads(sys.stdin.read())
    import ctypes

    import torch

    torch.set_num_threads(spec["threads"])
    if spec.get("scores_per_op"):
        from . import blocked

        blocked.SCORES_PER_OP = spec["scores_per_op"]
    q, k, v, grad = _inputs(spec)
    small = dict(spec, L=min(spec["L"], 64))
    make_call(spec["impl"], small, *_inputs(small))()  # load kernels, BLAS buffers and thread pools first
    call = make_call(spec["impl"], spec, q, k, v, grad)
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    exact = True
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak-RSS mark to the current RSS
    except OSError:
        exact = False
    base = _status_kib("VmRSS")
    call()
    peak = _status_kib("VmHWM")
    print(json.dumps({"extra_bytes": (peak - base) * 1024 if exact else None}))


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


def measure_peak_extra_bytes(impl: str, spec: dict) -> int | None:
    """Peak memory one call adds on top of its inputs: a fresh child process on the CPU, the allocator on CUDA."""
    import torch

    device = torch.device(spec["device"])
    if device.type == "cuda":
        q, k, v, grad = _inputs(spec)
        call = make_call(impl, spec, q, k, v, grad)
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        call()
        _sync(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    if device.type != "cpu" or not os.path.exists("/proc/self/clear_refs"):
        return None
    child = dict(spec, impl=impl, threads=torch.get_num_threads())
    result = subprocess.run(
        [sys.executable, "-c", "from attnlib.bench import _memory_child; _memory_child()"],
        input=json.dumps(child),
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if result.returncode != 0:
        print(f"  (memory measurement of {impl} at L={spec['L']} failed: {result.stderr.strip()[-300:]})")
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])["extra_bytes"]


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _triton_reason(device) -> str | None:
    if device.type != "cuda":
        return "Triton kernels are timed on CUDA only (on the CPU they run in the interpreter, for tests)"
    try:
        from .flash_triton import unavailable_reason
    except Exception as err:  # pragma: no cover - a broken install
        return f"attnlib.flash_triton does not import: {err}"
    return unavailable_reason(device)


def _skip_reason(impl: str, spec: dict, budget: int) -> str | None:
    reason = IMPLEMENTATIONS[impl].skip(spec)
    if reason:
        return reason
    itemsize = {"float32": 4, "float64": 8, "float16": 2, "bfloat16": 2}[spec["dtype"]]
    L = spec["L"]
    need = estimate_bytes(
        impl, spec["batch"], spec["heads"], L, L, spec["head_dim"], itemsize, backward=spec["backward"]
    )
    if need > budget:
        return f"needs ~{need / 2**30:.1f} GiB > {budget / 2**30:.1f} GiB budget (--memory-fraction)"
    return None


# --------------------------------------------------------------------------------------------------------------
# The implementations: one record each
# --------------------------------------------------------------------------------------------------------------


def _never(spec: dict) -> None:
    return None


@dataclass(frozen=True)
class Implementation:
    """One row kind of the benchmark table.

    ``forward(spec)`` returns ``f(q, k, v) -> output`` (timed under ``no_grad``, or with ``.backward`` for
    ``--backward``); or ``call(spec, q, k, v, grad)`` returns a zero-argument function that runs one measurement
    itself. ``extra_bytes(B, H, L, S, D, itemsize, backward)`` is a generous estimate of what one call needs
    besides its inputs, ``skip(spec)`` the reason it cannot run (or None), ``note`` what its table row says.
    """

    name: str
    summary: str
    extra_bytes: Callable[..., int]
    forward: Callable[[dict], Callable] | None = None
    call: Callable[..., Callable[[], object]] | None = None
    skip: Callable[[dict], str | None] = _never
    note: str = ""


def _linear(B, H, L, S, D, itemsize, backward):  # outputs, saved tensors and a few blocks: ~ L + S
    return 4 * B * H * (L + S) * D * itemsize + 64 * MiB


def _numpy_call(spec, q, k, v, grad):
    import numpy as np
    import torch

    from . import reference

    qn, kn, vn = (t.cpu().numpy() for t in (q, k, v))
    mask = np.tril(np.ones((q.shape[-2], k.shape[-2]), dtype=bool)) if spec["causal"] else None
    return lambda: torch.from_numpy(reference.attention(qn, kn, vn, mask)[0])


def _numpy_skip(spec):
    if spec["backward"]:
        return "NumPy reference has no backward"
    if spec["L"] > spec["reference_max_len"]:
        return f"NumPy reference only up to L={spec['reference_max_len']} (--reference-max-len)"
    return None


def _math_forward(spec):
    from .functional import scaled_dot_product_attention

    return lambda q, k, v: scaled_dot_product_attention(q, k, v, is_causal=spec["causal"])[0]


def _chunked_forward(spec):
    from .efficient import chunked_attention

    blocks = dict(block_q=spec["block_q"], block_k=spec["block_k"])
    return lambda q, k, v: chunked_attention(q, k, v, is_causal=spec["causal"], **blocks)


def _flash_forward(spec):
    from .flash import flash_attention

    blocks = dict(block_q=spec["block_q"], block_k=spec["block_k"])
    return lambda q, k, v: flash_attention(q, k, v, is_causal=spec["causal"], **blocks)


def _flash_mm_call(spec, q, k, v, grad):
    from .flash import flash_matmuls_only

    blocks = dict(block_q=spec["block_q"], block_k=spec["block_k"])
    return lambda: flash_matmuls_only(q, k, v, grad, is_causal=spec["causal"], **blocks)


def _flash_mm_skip(spec):
    if spec["dtype"] in ("float16", "bfloat16"):
        return "matmul floor measured for fp32/fp64 (the fp16/bf16 path computes in fp32)"
    return None


def _triton_forward(spec):
    from .flash_triton import flash_attention_triton

    blocks = dict(block_q=spec.get("triton_block_q", 64), block_k=spec.get("triton_block_k", 64))
    return lambda q, k, v: flash_attention_triton(q, k, v, is_causal=spec["causal"], **blocks)


def _triton_skip(spec):
    import torch

    reason = _triton_reason(torch.device(spec["device"]))
    if reason:
        return reason
    if spec["dtype"] == "float64":
        return "Triton kernels take fp32, fp16 or bf16"
    return None


def _sdpa_forward(spec):
    import torch.nn.functional as F

    return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=spec["causal"])


IMPLEMENTATIONS: dict[str, Implementation] = {
    r.name: r
    for r in (
        Implementation(
            "numpy",
            "attnlib.reference.attention, the NumPy oracle (small L only: --reference-max-len)",
            extra_bytes=lambda B, H, L, S, D, itemsize, backward: 5 * B * H * L * S * 8,  # may promote to float64
            call=_numpy_call,
            skip=_numpy_skip,
        ),
        Implementation(
            "math",
            "attnlib.scaled_dot_product_attention: matmul, softmax, matmul; memory ~ L*S",
            extra_bytes=lambda B, H, L, S, D, itemsize, backward: (5 if backward else 3) * B * H * L * S * itemsize,
            forward=_math_forward,
        ),
        Implementation(
            "chunked",
            "attnlib.efficient.chunked_attention (lesson 12): the blocked core with masks; memory ~ L + S",
            extra_bytes=_linear,
            forward=_chunked_forward,
        ),
        Implementation(
            "flash",
            "attnlib.flash.flash_attention (lesson 13): FlashAttention-2 on the same blocked core",
            extra_bytes=_linear,
            forward=_flash_forward,
        ),
        Implementation(
            "flash-mm",
            "attnlib.flash.flash_matmuls_only: flash's loops with only their matmuls, the floor under flash",
            extra_bytes=_linear,
            call=_flash_mm_call,
            skip=_flash_mm_skip,
            note="matmuls of flash's loops only: not attention, the floor under flash",
        ),
        Implementation(
            "triton",
            "attnlib.flash_triton.flash_attention_triton (CUDA only; skipped elsewhere, with the reason)",
            extra_bytes=_linear,
            forward=_triton_forward,
            skip=_triton_skip,
        ),
        Implementation(
            "sdpa",
            "torch.nn.functional.scaled_dot_product_attention, PyTorch's fused kernels: the yardstick",
            extra_bytes=_linear,
            forward=_sdpa_forward,
        ),
    )
}
IMPLS = tuple(IMPLEMENTATIONS)


def run_benchmark(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict:
    """Run everything ``args`` asks for; returns the JSON-able results."""
    import torch

    from .device import get_device

    device = torch.device(args.device) if args.device else get_device()
    dtype = getattr(torch, args.dtype)
    for name in ("batch", "heads", "head_dim", "block_q", "block_k", "repeats"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if any(L < 1 for L in args.lengths):
        raise ValueError(f"--lengths must be positive, got {args.lengths}")
    impls = [i for i in IMPLS if i in args.impls]
    from . import blocked

    scores_per_op = getattr(args, "scores_per_op", None)
    if scores_per_op is not None:
        if scores_per_op < 1:
            raise ValueError(f"--scores-per-op must be >= 1, got {scores_per_op}")
        blocked.SCORES_PER_OP = scores_per_op  # this process's runs (and the memory children read the config)
    modes = list(dict.fromkeys(args.modes or (["causal"] if args.causal else ["full"])))
    config = {
        "lengths": list(args.lengths),
        "batch": args.batch,
        "heads": args.heads,
        "head_dim": args.head_dim,
        "dtype": args.dtype,
        "device": str(device),
        "block_q": args.block_q,
        "block_k": args.block_k,
        "scores_per_op": blocked.SCORES_PER_OP,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "impls": impls,
        "backward": args.backward,
        "causal": modes == ["causal"],
        "modes": modes,
        "memory_fraction": args.memory_fraction,
        "seed": args.seed,
        "reference_max_len": args.reference_max_len,
    }
    log(
        f"attnlib bench: {'forward+backward' if args.backward else 'forward'}"
        f" ({' and '.join(modes)}), B={args.batch} H={args.heads} D={args.head_dim} {args.dtype} on "
        f"{device} ({torch.get_num_threads()} threads), repeats={args.repeats}, chunked blocks "
        f"{args.block_q}x{args.block_k}"
    )
    load_start = _loadavg()
    peak = measure_matmul_gflops(device, dtype)
    log(f"matmul peak (2n^3 flops, best of 4): {peak:.1f} GFLOP/s; 1-minute load average {load_start}")
    rows: list[dict] = []
    for mode, L in [(m, L) for m in modes for L in args.lengths]:
        spec = dict(config, L=L, device=str(device), causal=mode == "causal")
        budget = int(args.memory_fraction * available_bytes(device))
        todo, results = [], {}
        for impl in impls:
            reason = _skip_reason(impl, spec, budget)
            results[impl] = {
                "mode": mode,
                "L": L,
                "impl": impl,
                "status": "skipped" if reason else "ok",
                "reason": reason,
            }
            if not reason:
                todo.append(impl)
        q, k, v, grad = _inputs(spec) if todo else (None,) * 4
        calls = {impl: make_call(impl, spec, q, k, v, grad) for impl in todo}
        outputs = {}
        for impl in todo:  # memory first (in a child), then a warm-up that also gives the output to compare
            results[impl]["peak_extra_bytes"] = None if args.no_memory else measure_peak_extra_bytes(impl, spec)
            for _ in range(max(1, args.warmup)):
                outputs[impl] = calls[impl]()
            _sync(device)
        times: dict[str, list[float]] = {impl: [] for impl in todo}
        for _ in range(args.repeats):  # interleaved: each repeat visits every implementation
            for impl in todo:
                _sync(device)
                t0 = time.perf_counter()
                calls[impl]()
                _sync(device)
                times[impl].append(time.perf_counter() - t0)
        ref = outputs.get("sdpa")
        flops = attention_flops(args.batch, args.heads, L, L, args.head_dim, backward=args.backward)
        if mode == "causal":
            flops /= 2  # about half the scores are masked (and skipped by the tiled paths)
        for impl in todo:
            r = results[impl]
            r["times_s"] = times[impl]
            r["median_s"] = statistics.median(times[impl])
            r["gflops"] = flops / r["median_s"] / 1e9
            r["pct_peak"] = 100.0 * r["gflops"] / peak
            r["peak_extra_mib"] = None if r["peak_extra_bytes"] is None else r["peak_extra_bytes"] / MiB
            out = outputs[impl].to(device=device, dtype=torch.float64)
            r["max_err"] = None if ref is None else float((out - ref.to(torch.float64)).abs().max())
            if IMPLEMENTATIONS[impl].note:  # not attention (the matmul floor): no error to report
                r["max_err"], r["note"] = None, IMPLEMENTATIONS[impl].note
        base = results.get("sdpa")
        for impl in todo:
            r = results[impl]
            ok = base is not None and base["status"] == "ok"
            r["speed_vs_sdpa"] = base["median_s"] / r["median_s"] if ok else None
            mem_ok = ok and r["peak_extra_bytes"] is not None and base["peak_extra_bytes"]
            r["mem_vs_sdpa"] = r["peak_extra_bytes"] / base["peak_extra_bytes"] if mem_ok else None
        for impl in impls:  # progress: one table line per implementation as each length finishes
            rows.append(results[impl])
            log(format_table([results[impl]]).splitlines()[-1])
        del q, k, v, grad, calls, outputs
        gc.collect()
    peak = max(peak, measure_matmul_gflops(device, dtype))
    for r in rows:
        if r["status"] == "ok":
            r["pct_peak"] = 100.0 * r["gflops"] / peak
    return {
        "config": config,
        "bounds": bounds(rows),
        "machine": {
            "matmul_gflops": peak,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "platform": sys.platform,
            # 1-minute load average at the start and the end: how busy the machine was (None where unknown)
            "loadavg": [load_start, _loadavg()],
        },
        "results": rows,
    }


def main(args: argparse.Namespace) -> int:
    """``attnlib bench``: run, print the table, write JSON and the plot if asked."""
    try:
        results = run_benchmark(args)
    except ValueError as err:
        print(f"attnlib bench: {err}", file=sys.stderr)
        return 2
    print()
    print(format_table(results["results"]))
    print(
        f"matmul peak {results['machine']['matmul_gflops']:.1f} GFLOP/s; x SDPA speed = SDPA time / time; "
        "x SDPA mem = extra memory / SDPA's; max err = max |out - SDPA out|"
    )
    if results["bounds"]:
        print("\nWhat bounds the tiled PyTorch path (flash), measured in this run:")
        print(format_bounds(results["bounds"]))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
        print(f"wrote {args.json}")
    if args.plot:
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        plot_results(results, args.plot)
        print(f"wrote {args.plot}")
    return 0
