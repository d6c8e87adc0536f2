"""An honest roofline for the CPU benchmarks: the cores' fp32 FMA limit, the matmul rates libraries reach, and
FLOP counts cross-checked with XLA's own cost analysis.

    python benchmarks/roofline.py [--quick] [--sizes 256,512,1024,2048,4096] [--skip-flops]

(a) CPU facts from ``/proc/cpuinfo`` (model, family/model, AVX2/FMA/AVX-512 flags, the reported clock), the CPUs
    this process may use (affinity) and a cgroup CPU quota if one is set.
(b) Two C micro-kernels compiled here with the system C compiler (skipped, with a note, when there is none):
    the effective clock (a chain of dependent integer adds, 1 cycle each), and the fp32 FMA throughput (12
    independent 8-wide ``vfmadd`` chains per thread, 16-wide with AVX-512; one thread per usable CPU), each the
    best of 3 runs (other processes only slow a run down). The FMA peak used for percentages is the larger of
    the all-threads run and usable CPUs x the 1-thread run (another job holding a core halves the former). The
    theoretical limit printed next to it assumes **2 FMA units per core** (Zen 2-4, Intel Haswell and later
    client cores): ``cores x 2 x lanes x 2 FLOP x clock`` (= 32 FLOP/cycle/core with AVX2).
(c) fp32 ``n x n`` matmul GFLOP/s at several sizes with ``jax.jit``, numpy and torch, each a median over
    repeats of windows of at least ``--window`` seconds (short bursts that a CPU quota throttles later do not
    count; the best window too), with its share of the measured FMA throughput. ``jax.jit a@a`` squares one
    operand, as ``bench_estimator.matmul_peak`` does.
(d) FLOP counts: XLA's cost analysis (``jax.jit(f).lower(*args).compile().cost_analysis()``) of the matmul
    (must be 2n³) and of the full-size CosyVoice2 estimator's offline forward (batch 2, T = 100, 500; compiled
    from shapes only, never run) against ``bench_estimator.py``'s hand count (2·weights·frames + 4·T²·width per
    attention layer). XLA also counts elementwise work (norms, activations, softmax), so its count should be a
    few percent above the hand count, never below.

Quote "% of peak" against the measured FMA throughput (the hardware bound), not against a matmul figure: the
other benchmarks get it from :func:`peak_gflop_s` (this script's JSON, or the kernel run on the spot).
Writes ``benchmarks/results/roofline_<backend>.json``.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import print_table, write_json  # noqa: E402

KERNELS_C = r"""
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef __AVX512F__
typedef __m512 vec;
#define LANES 16
#define FMA _mm512_fmadd_ps
#define SET _mm512_set1_ps
#define ADD _mm512_add_ps
#define STORE _mm512_storeu_ps
#else
typedef __m256 vec;
#define LANES 8
#define FMA _mm256_fmadd_ps
#define SET _mm256_set1_ps
#define ADD _mm256_add_ps
#define STORE _mm256_storeu_ps
#endif
#define ACC 12
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }
static long iters;
static void *fma_worker(void *out) {
    vec a[ACC], m = SET(0.9999999f), c = SET(1e-7f);
    for (int j = 0; j < ACC; j++) a[j] = SET((float)j);
    for (long i = 0; i < iters; i++)
        for (int j = 0; j < ACC; j++) a[j] = FMA(a[j], m, c);
    vec s = a[0];
    for (int j = 1; j < ACC; j++) s = ADD(s, a[j]);
    float buf[LANES]; STORE(buf, s); *(float *)out = buf[0];
    return NULL;
}
static double fma_run(int threads) {
    pthread_t t[256]; float sink[256]; double t0 = now();
    for (int k = 0; k < threads; k++) pthread_create(&t[k], NULL, fma_worker, &sink[k]);
    for (int k = 0; k < threads; k++) pthread_join(t[k], NULL);
    return now() - t0;
}
int main(int argc, char **argv) {
    double seconds = atof(argv[3]);
    if (!strcmp(argv[1], "clock")) {  /* 10 dependent 1-cycle adds per iteration */
        long n = 1000000, x = 0; double t = 0;
        while (t < seconds) {
            n *= 2; double t0 = now();
            for (long i = 0; i < n; i++)
                __asm__ volatile("add $1,%0\n\tadd $1,%0\n\tadd $1,%0\n\tadd $1,%0\n\tadd $1,%0\n\t"
                                 "add $1,%0\n\tadd $1,%0\n\tadd $1,%0\n\tadd $1,%0\n\tadd $1,%0" : "+r"(x));
            t = now() - t0;
        }
        printf("%.6f %ld\n", 10.0 * n / t / 1e9, x);
        return 0;
    }
    int threads = atoi(argv[2]);
    iters = 1000000; double t = fma_run(1);
    iters = (long)(iters * seconds / t);
    t = fma_run(threads);
    printf("%.6f %d\n", (double)threads * iters * ACC * LANES * 2 / t / 1e9, LANES);
    return 0;
}
"""


# ---------------------------------------------------------------------------------------------------- facts
def cpu_facts() -> dict:
    """Model, flags, reported clock, usable CPUs and the cgroup quota."""
    info = pathlib.Path("/proc/cpuinfo").read_text() if pathlib.Path("/proc/cpuinfo").exists() else ""
    fields: dict[str, str] = {}
    mhz = []
    for line in info.splitlines():
        if ":" not in line:
            continue
        k, v = (s.strip() for s in line.split(":", 1))
        fields.setdefault(k, v)
        if k == "cpu MHz":
            mhz.append(float(v))
    flags = set(fields.get("flags", "").split())
    quota = None
    cpu_max = pathlib.Path("/sys/fs/cgroup/cpu.max")
    if cpu_max.exists():
        q, period = cpu_max.read_text().split()[:2]
        quota = None if q == "max" else int(q) / int(period)
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"model_name": fields.get("model name"), "family": fields.get("cpu family"), "model": fields.get("model"),
            "reported_mhz": mhz, "usable_cpus": usable, "os_cpu_count": os.cpu_count(), "cgroup_cpu_quota": quota,
            "avx2": "avx2" in flags, "fma": "fma" in flags, "avx512f": "avx512f" in flags}


def run_kernels(facts: dict, seconds: float) -> dict:
    """Measured clock (GHz) and FMA GFLOP/s (1 thread, all usable CPUs); ``{"note": ...}`` when not possible."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None or not (facts["avx2"] and facts["fma"]):
        return {"note": "no C compiler or no AVX2+FMA: micro-kernels skipped"}
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = pathlib.Path(tmp) / "k.c", pathlib.Path(tmp) / "k"
        src.write_text(KERNELS_C)
        arch = ["-mavx512f"] if facts["avx512f"] else ["-mavx2", "-mfma"]
        subprocess.run([cc, "-O3", *arch, "-pthread", str(src), "-o", str(exe)], check=True, capture_output=True)
        run = lambda *a: subprocess.run([str(exe), *map(str, a)], check=True, capture_output=True,  # noqa: E731
                                        text=True).stdout.split()
        ghz = [float(run("clock", 1, seconds)[0]) for _ in range(3)]
        one = [float(run("fma", 1, seconds)[0]) for _ in range(3)]
        n = facts["usable_cpus"]
        allc, lanes = [], 8
        for _ in range(3):
            out = run("fma", n, seconds)
            allc.append(float(out[0]))
            lanes = int(out[1])
    clock = max(ghz)  # best of 3: other processes only ever slow a run down
    return {"clock_ghz": clock, "fma_1thread_gflop_s": max(one), "fma_all_gflop_s": max(allc),
            "fma_threads": n, "lanes": lanes,
            # the hardware bound: all threads at once, or n x one thread when other jobs held a core meanwhile
            "fma_peak_gflop_s": max(max(allc), n * max(one)),
            "fma_limit_at_measured_clock_gflop_s": n * 2 * lanes * 2 * clock,  # 2 FMA units per core assumed
            "flop_per_cycle_per_core_assumed": 2 * lanes * 2}


def peak_gflop_s(*, seconds: float = 0.3) -> tuple[float | None, str]:
    """The fp32 peak every benchmark's "% of peak" divides by: ``(GFLOP/s, where it came from)``.

    ``benchmarks/results/roofline_<backend>.json``'s measured FMA throughput when that file was written on this CPU
    model with this many usable CPUs; else, on a CPU, the FMA kernel run now (``seconds`` per run, best of 3); else
    ``(None, why)`` (no C compiler, or an accelerator: no kernel of ours measures its peak).
    """
    import json

    backend = jax.default_backend()
    facts = cpu_facts() if backend == "cpu" else {}
    path = pathlib.Path(__file__).resolve().parent / "results" / f"roofline_{backend}.json"
    if path.exists():
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError):
            saved = {}
        same = backend != "cpu" or all(saved.get("cpu", {}).get(k) == facts.get(k) for k in ("model_name",
                                                                                            "usable_cpus"))
        if same and saved.get("peak_for_percentages_gflop_s"):
            return float(saved["peak_for_percentages_gflop_s"]), f"FMA kernel, {path.name} ({saved.get('time')})"
    if backend != "cpu":
        return None, f"no measured peak for {backend} (run benchmarks/roofline.py there)"
    kernels = run_kernels(facts, seconds)
    if "fma_peak_gflop_s" not in kernels:
        return None, kernels.get("note", "no FMA measurement")
    return kernels["fma_peak_gflop_s"], f"FMA kernel measured now ({facts['usable_cpus']} CPUs)"


# --------------------------------------------------------------------------------------------------- matmul
def _rate(fn, n: int, window: float, repeats: int) -> float:
    """GFLOP/s of ``fn()`` (an n x n x n matmul): median over ``repeats`` windows of >= ``window`` seconds."""
    fn()
    t0, k = time.perf_counter(), 0
    while time.perf_counter() - t0 < window / 4:
        fn()
        k += 1
    per = (time.perf_counter() - t0) / k
    calls = max(1, int(window / per))
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        rates.append(2 * n**3 * calls / (time.perf_counter() - t0) / 1e9)
    return statistics.median(rates), max(rates)


def matmul_rates(sizes, window: float, repeats: int) -> list[dict]:
    import torch

    rows = []
    for n in sizes:
        rng = np.random.default_rng(n)
        a, b = rng.standard_normal((n, n), np.float32), rng.standard_normal((n, n), np.float32)
        ja, jb = jnp.asarray(a), jnp.asarray(b)
        mm = jax.jit(jnp.matmul)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        ref = a.astype(np.float64) @ b.astype(np.float64)
        for lib, fn, out in (("jax.jit", lambda: mm(ja, jb).block_until_ready(), lambda: np.asarray(mm(ja, jb))),
                             ("jax.jit a@a", lambda: mm(ja, ja).block_until_ready(), None),  # bench_estimator's way
                             ("numpy", lambda: a @ b, lambda: a @ b),
                             ("torch", lambda: torch.mm(ta, tb), lambda: torch.mm(ta, tb).numpy())):
            err = None if out is None else float(np.abs(out() - ref).max() / np.abs(ref).max())  # really computed
            median, best = _rate(fn, n, window, repeats)
            rows.append({"what": "matmul fp32", "n": n, "lib": lib, "gflop_s": median, "best_gflop_s": best,
                         "rel_err_vs_fp64": err, "loadavg": os.getloadavg()[0]})
            print(rows[-1], flush=True)
    return rows


# ----------------------------------------------------------------------------------------------- FLOP counts
def xla_cost(fn, *args, **kwargs) -> dict:
    """XLA's cost analysis of ``jax.jit(fn)`` for these arguments (arrays or ``jax.ShapeDtypeStruct``s; nothing
    runs): ``{"flops", "transcendentals", "bytes_accessed"}`` (a dot counts 2·M·N·K; elementwise ops count too)."""
    cost = jax.jit(fn).lower(*args, **kwargs).compile().cost_analysis()
    if isinstance(cost, (list, tuple)):  # older jax: one dict per computation
        cost = cost[0]
    return {"flops": float(cost.get("flops", 0.0)), "transcendentals": float(cost.get("transcendentals", 0.0)),
            "bytes_accessed": float(cost.get("bytes accessed", 0.0))}


def flop_checks(lengths) -> list[dict]:
    """XLA vs hand FLOP counts: the n x n matmul and the full-size estimator's offline forward (batch 2)."""
    rows = []
    n = 1024
    s = jax.ShapeDtypeStruct((n, n), jnp.float32)
    got = xla_cost(jnp.matmul, s, s)["flops"]
    rows.append({"what": f"matmul {n}", "hand_gflop": 2 * n**3 / 1e9, "xla_gflop": got / 1e9, "xla_over_hand":
                 got / (2 * n**3)})
    from bench_estimator import frame_weights, inputs  # the hand count's own helpers

    from fmjax.models.causal_unet import CausalConditionalDecoder, CausalUNetConfig

    cfg = CausalUNetConfig()
    model = CausalConditionalDecoder(cfg)
    x0, c0, t0 = inputs(cfg, 1, 4, jnp.float32)
    params = jax.eval_shape(model.init, jax.random.key(0), x0, c0, t0)
    p_frame = frame_weights(params)
    layers, inner, b = (2 + cfg.num_mid_blocks) * cfg.n_blocks, cfg.num_heads * cfg.head_dim, 2
    spec = lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype)  # noqa: E731
    for t_len in lengths:
        x, cond, t = jax.tree_util.tree_map(spec, inputs(cfg, b, t_len, jnp.float32))
        hand = 2 * p_frame * b * t_len + layers * 4 * b * t_len * t_len * inner
        t_start = time.perf_counter()
        cost = xla_cost(lambda p, x, c, t: model.apply(p, x, c, t)[0], params, x, cond, t)
        rows.append({"what": f"estimator offline b=2 T={t_len}", "hand_gflop": hand / 1e9,
                     "xla_gflop": cost["flops"] / 1e9, "xla_over_hand": cost["flops"] / hand,
                     "xla_transcendentals_g": cost["transcendentals"] / 1e9,
                     "compile_s": time.perf_counter() - t_start})
        print(rows[-1], flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="sizes 256,1024,2048, 3 repeats, 0.3-s windows")
    ap.add_argument("--sizes", default=None, help="comma-separated matmul sizes (default 256,512,1024,2048,4096)")
    ap.add_argument("--window", type=float, default=None, help="seconds per timed window (default 1.0)")
    ap.add_argument("--skip-flops", action="store_true", help="skip the XLA cost-analysis cross-checks")
    args = ap.parse_args()
    sizes = [int(s) for s in (args.sizes or ("256,1024,2048" if args.quick else "256,512,1024,2048,4096")).split(",")]
    if any(n < 1 for n in sizes):
        ap.error(f"--sizes: expected positive integers, got {args.sizes!r}")
    window = args.window or (0.3 if args.quick else 1.0)
    repeats = 3 if args.quick else 5
    load_start = os.getloadavg()[0]
    facts = cpu_facts()
    print(facts, flush=True)
    kernels = run_kernels(facts, window)
    print(kernels, flush=True)
    rows = matmul_rates(sizes, window, repeats)
    fma = kernels.get("fma_peak_gflop_s")
    for r in rows:
        r["of_fma_measured"] = r["gflop_s"] / fma if fma else None
    flops = [] if args.skip_flops else flop_checks((100,) if args.quick else (100, 500))
    best = max(rows, key=lambda r: r["gflop_s"])
    title = (f"{facts['model_name']} (family {facts['family']} model {facts['model']}), {facts['usable_cpus']} CPUs; "
             f"clock {kernels.get('clock_ghz', float('nan')):.3g} GHz measured; FMA kernel "
             f"{fma or float('nan'):.4g} GFLOP/s (all threads {kernels.get('fma_all_gflop_s', float('nan')):.4g}, "
             f"1 thread {kernels.get('fma_1thread_gflop_s', float('nan')):.4g}; limit at that clock, 2 FMA units/core: "
             f"{kernels.get('fma_limit_at_measured_clock_gflop_s', float('nan')):.4g}); best matmul "
             f"{best['gflop_s']:.4g} ({best['lib']}, n={best['n']}); load {load_start:.2f} -> {os.getloadavg()[0]:.2f}")
    print_table(rows, ["what", "n", "lib", "gflop_s", "best_gflop_s", "of_fma_measured", "rel_err_vs_fp64", "loadavg"],
                title=title)
    if flops:
        print_table(flops, ["what", "hand_gflop", "xla_gflop", "xla_over_hand", "xla_transcendentals_g", "compile_s"],
                    title="FLOP counts: hand vs XLA cost analysis")
    if fma and best["gflop_s"] > 1.02 * fma:
        print(f"WARNING: a matmul ({best['gflop_s']:.4g} GFLOP/s) beat the FMA kernel ({fma:.4g}): the timing or the "
              "core count is off (a CPU quota burst? more cores than the affinity says?)")
    write_json(f"roofline_{jax.default_backend()}", {
        "cpu": facts, "kernels": kernels, "matmul": rows, "flop_checks": flops,
        "peak_for_percentages_gflop_s": fma, "best_matmul_gflop_s": best["gflop_s"],
        "loadavg_start": load_start, "loadavg_end": os.getloadavg()[0]})


if __name__ == "__main__":
    main()
