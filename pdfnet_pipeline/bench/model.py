"""Model benchmark: PDFNet step time and peak memory, ours against the reference's arithmetic.

`pdfnet-pipeline bench model [--set sizes=[512] --set "checkpointing=[false,true]" ...]`

Axes (every combination is one configuration; the baseline of each size and pass is the first):
- `attention`: "materialized" is what the reference runs. Its CoA uses nn.MultiheadAttention,
  which forms softmax(Q K^T / sqrt(d)) explicitly, then applies dropout to it and multiplies
  by V: the finest FSE stage holds a 16,384 x 16,384 matrix at 1024² (1 GiB in float32, more
  for its softmax and dropout copies kept for backward). Our `SDPAttention(materialize=True)`
  does exactly that arithmetic. "sdpa" is ours: `F.scaled_dot_product_attention`, whose flash /
  memory-efficient kernels never store the matrix. Caveat: on the CPU, SDPA with dropout
  (training) falls back to PyTorch's math kernel, which materialises the matrix as well, so CPU
  train steps differ little; inference on the CPU and everything on CUDA use fused kernels.
- `checkpointing`: `PDFNetConfig.grad_checkpoint` off (baseline) / on. Only the train pass is
  affected; forward rows are measured without it.
- `passes`: "forward" = `predict` in eval mode under no_grad; "train" = forward with the losses
  (dropout and drop-path active), backward and one AdamW step (the project's optimizer).

Method: each measurement runs in a fresh Python process (`isolate`), because on the CPU the
peak resident set (ru_maxrss) is per process and memory freed to malloc is not reliably given
back. The process builds the model (random weights: time and memory do not depend on them),
runs `warmup` untimed steps, then `steps` timed ones. "first s" is the first step of the process
(one-off set-up included: the whole-run cost of a single step), "steady s" the timed steps after
warm-up. Peak memory: CPU ru_maxrss of the process (model, optimizer state and imports
included); "act GiB" subtracts the resident size measured after the model was built. CUDA:
max_memory_allocated. A process that dies (CUDA out of memory, or the kernel's OOM killer)
is reported with the resident size it had reached when that is known: a lower bound of its
peak. Each repeat runs all configurations in a freshly shuffled order (seeded), so drift and
neighbours on a shared machine fall on all alike; min and median over repeats. CPU float32; on
CUDA bf16 autocast. `isolate=false` runs in this process (seconds with the tiny preset, for
smoke tests; CPU memory is then not measured, CUDA peaks still are: they are reset per run). `run` returns the table's rows.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field

from pdfnet_pipeline.config import ConfigError

# spec/model.md, reference code, CPU 2 threads float32 batch 1
ANCHORS = {
    (1024, "forward"): "reference CPU: inference 32 s, 3.8 GiB",
    (1024, "train"): "reference CPU: ~180 s, 20 GiB",
    (512, "train"): "reference CPU: 25 s, 8.5 GiB",
}


@dataclass
class Config:
    sizes: list[int] = field(default_factory=lambda: [512, 1024])
    preset: str = "reference"
    variant: str = "paper"
    batch: int = 1
    device: str = "auto"  # auto: cuda if available, else cpu
    attention: list[str] = field(default_factory=lambda: ["materialized", "sdpa"])  # first = baseline
    checkpointing: list[bool] = field(default_factory=lambda: [False])  # [false, true] to compare
    passes: list[str] = field(default_factory=lambda: ["forward", "train"])
    repeats: int = 3
    warmup: int = 1  # steps per process before the timed ones (>= 1; the first is "first s")
    steps: int = 1  # timed steps per process; 0: only the first step (memory and first-step time)
    threads: int = 0  # 0: torch default
    isolate: bool = True  # a fresh process per measurement (needed for CPU peak memory)
    seed: int = 0  # order of configurations within each repeat


@dataclass(frozen=True)
class Case:
    size: int
    mode: str  # "forward" | "train"
    attention: str
    checkpointing: bool


def cases(cfg: Config) -> list[Case]:
    """Every configuration; checkpointing is only varied for the train pass (no effect without grad)."""
    out = []
    for size in cfg.sizes:
        for mode in cfg.passes:
            ckpts = cfg.checkpointing if mode == "train" else cfg.checkpointing[:1]
            out += [Case(size, mode, a, c) for c in ckpts for a in cfg.attention]
    return out


def measure(case: Case, cfg: Config) -> dict:
    """One process's measurement: {"first_s", "steady_s", "peak_gib", "base_gib", "threads", "device"}."""
    import resource

    import torch

    from pdfnet_pipeline.model import PDFNetConfig, build_pdfnet
    from pdfnet_pipeline.train.optim import OptimConfig, build_optimizer

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(_device_name(cfg.device, torch.cuda.is_available()))
    cuda = device.type == "cuda"
    if cuda:  # in-process runs (isolate=false) measure each configuration's own peak
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(0)
    mcfg = PDFNetConfig(
        preset=cfg.preset,
        variant=cfg.variant,
        materialize_attention=case.attention == "materialized",
        grad_checkpoint=case.checkpointing,
    )
    model = build_pdfnet(mcfg).to(device)
    b, s = cfg.batch, case.size
    image = torch.randn(b, 3, s, s, device=device)
    depth = torch.rand(b, 1, s, s, device=device)
    mask = (torch.rand(b, 1, s, s, device=device) > 0.5).float()
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda)
    train = case.mode == "train"
    model.train(train)
    opt = build_optimizer(model, OptimConfig(), device) if train else None

    def step() -> float:
        t = time.perf_counter()
        if train:
            with amp:
                out = model(image, depth, mask, depth)
            out.losses["total"].backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        else:
            with torch.no_grad(), amp:
                model.predict(image, depth)
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t

    base = torch.cuda.memory_allocated() / 2**30 if cuda else _rss_gib()
    first = step()
    for _ in range(cfg.warmup - 1):
        step()
    timed = [step() for _ in range(cfg.steps)]
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**30
    elif cfg.isolate:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    else:
        peak = base = None  # the process peak belongs to earlier configurations too
    name = torch.cuda.get_device_name() if cuda else "CPU"
    return {
        "first_s": first,
        "steady_s": statistics.median(timed) if timed else None,
        "peak_gib": peak,
        "base_gib": base,
        "threads": torch.get_num_threads(),
        "device": name,
    }


def _device_name(device: str, cuda_available: bool) -> str:
    if device == "auto":
        return "cuda" if cuda_available else "cpu"
    return device


def _rss_gib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def _run_isolated(case: Case, cfg: Config) -> dict:
    import resource

    args = json.dumps({"case": asdict(case), "cfg": asdict(cfg)})
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    proc = subprocess.run(
        [sys.executable, "-m", "pdfnet_pipeline.bench.model", args], capture_output=True, text=True, check=False
    )
    if proc.returncode == 0:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    # e.g. CUDA out of memory, or SIGKILL from the kernel's OOM killer: the largest resident size
    # of any finished child grew -> it is this one's, a lower bound on what the step needed
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    reached = f" after reaching {after / 2**20:.1f} GiB" if after > before else ""
    if proc.returncode == -9:
        return {"error": f"killed (SIGKILL, out of memory?){reached}"}
    tail = (proc.stderr.strip().splitlines() or [""])[-1]
    return {"error": f"exit {proc.returncode}{reached}: {tail[-120:]}"}


def _collect(cfg: Config) -> dict[Case, list[dict]]:
    all_cases = cases(cfg)
    results: dict[Case, list[dict]] = {c: [] for c in all_cases}
    rng = random.Random(cfg.seed)
    for rep in range(cfg.repeats):
        order = all_cases[:]
        rng.shuffle(order)
        for case in order:
            r = _run_isolated(case, cfg) if cfg.isolate else measure(case, cfg)
            results[case].append(r)
            print(f"  repeat {rep + 1}/{cfg.repeats} {_label(case)}: {_brief(r)}", flush=True)
    return results


def _label(c: Case) -> str:
    return f"{c.size}² {c.mode} {c.attention}{' ckpt' if c.checkpointing else ''}"


def _brief(r: dict) -> str:
    if "error" in r:
        return r["error"]
    peak = "" if r["peak_gib"] is None else f", peak {r['peak_gib']:.2f} GiB"
    steady = "" if r["steady_s"] is None else f", steady {r['steady_s']:.2f} s"
    return f"first {r['first_s']:.2f} s{steady}{peak}"


def summarize(results: dict[Case, list[dict]]) -> list[dict]:
    """One row per configuration: min / median times, median peaks, ratios to its baseline."""
    rows, baselines = [], {}
    for case, runs in results.items():
        ok = [r for r in runs if "error" not in r]
        row = {"case": case, "runs": len(ok), "errors": [r["error"] for r in runs if "error" in r]}
        if ok:
            row["first_med"] = statistics.median(r["first_s"] for r in ok)
            steady = [r["steady_s"] for r in ok if r["steady_s"] is not None]
            if steady:
                row |= {"steady_min": min(steady), "steady_med": statistics.median(steady)}
            if ok[0]["peak_gib"] is not None:
                row["peak_med"] = statistics.median(r["peak_gib"] for r in ok)
                row["act_med"] = statistics.median(r["peak_gib"] - r["base_gib"] for r in ok)
        base = baselines.setdefault((case.size, case.mode), row)
        timed = "steady_med" if "steady_med" in row else "first_med"  # steps=0: first steps only
        if timed in row and timed in base:
            row["time_ratio"] = row[timed] / base[timed]
        if "peak_med" in row and "peak_med" in base:
            row["peak_ratio"] = row["peak_med"] / base["peak_med"]
            row["act_ratio"] = row["act_med"] / base["act_med"]
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    head = (
        f"{'size':>5} {'pass':<7} {'attention':<12} {'ckpt':<4} {'n':>2} {'steady min s':>12} "
        f"{'steady med s':>12} {'first s':>8} {'peak GiB':>8} {'act GiB':>8} {'x time':>7} {'x peak':>7} "
        f"{'x act':>6}  baseline"
    )
    lines = [head]

    def f(row, key, fmt):
        return format(row[key], fmt) if key in row else "-"

    for row in rows:
        c = row["case"]
        note = "; ".join(row["errors"]) or ANCHORS.get((c.size, c.mode), "")
        lines.append(
            f"{c.size:>5} {c.mode:<7} {c.attention:<12} {'on' if c.checkpointing else 'off':<4} {row['runs']:>2} "
            f"{f(row, 'steady_min', '12.2f'):>12} {f(row, 'steady_med', '12.2f'):>12} {f(row, 'first_med', '8.2f'):>8} "
            f"{f(row, 'peak_med', '8.2f'):>8} {f(row, 'act_med', '8.2f'):>8} {f(row, 'time_ratio', '7.2f'):>7} "
            f"{f(row, 'peak_ratio', '7.2f'):>7} {f(row, 'act_ratio', '6.2f'):>6}  {note}"
        )
    return "\n".join(lines)


def _check(cfg: Config) -> None:
    if cfg.warmup < 1 or cfg.steps < 0 or cfg.repeats < 1:
        raise ConfigError(
            f"bench model: warmup >= 1, steps >= 0, repeats >= 1 (got {cfg.warmup}, {cfg.steps}, {cfg.repeats})"
        )
    if unknown := set(cfg.attention) - {"materialized", "sdpa"}:
        raise ConfigError(f"bench model: attention {sorted(unknown)} unknown (materialized, sdpa)")
    if unknown := set(cfg.passes) - {"forward", "train"}:
        raise ConfigError(f"bench model: passes {sorted(unknown)} unknown (forward, train)")


def run(cfg: Config) -> list[dict]:
    _check(cfg)
    cores = len(os.sched_getaffinity(0))
    mode = "a fresh process per measurement" if cfg.isolate else "in process (no CPU memory figures)"
    print(
        f"PDFNet {cfg.preset}/{cfg.variant}, batch {cfg.batch}, random weights; {cores} cores available, "
        f"torch threads {cfg.threads or 'default'}; {cfg.repeats} repeats, configurations shuffled per "
        f"repeat (seed {cfg.seed}); {cfg.warmup} warm-up + {cfg.steps} timed step(s) per measurement, {mode}; "
        f"load average at start {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    results = _collect(cfg)
    first = next((r for runs in results.values() for r in runs if "error" not in r), None)
    if first:
        dtype = "float32" if first["device"] == "CPU" else "bf16 autocast"
        print(f"device: {first['device']}, {dtype}, {first['threads']} torch threads")
    rows = summarize(results)
    print(format_table(rows))
    print(
        "x = ratio of medians to the first row of the same size and pass (time: steady steps, or first "
        f"steps when steps=0); load average at end {os.getloadavg()[0]:.1f}"
    )
    return rows


if __name__ == "__main__":  # worker: one measurement, JSON on the last line of stdout
    spec = json.loads(sys.argv[1])
    print(json.dumps(measure(Case(**spec["case"]), Config(**spec["cfg"]))))
