"""One command that exercises the GPU path: `pdfnet-pipeline bench gpu --set out=\"out/gpu-check\"`.

Runs what already exists, each step in its own subprocess with its own timeout so one failure or
hang does not stop the rest: the `gpu`-marked tests, `bench depth` (the official four-pass loop
vs the stage making the four maps with small / base / large, random weights; bf16 deviation per
model), `bench model` at 1024² (SDPA vs materialised, checkpointing off / on, forward and train),
`bench train` doubling the batch until out of memory, and `bench metrics`. On CUDA the timeouts
sum to 8 minutes. Without CUDA (or `mode="dry"`) the same steps run with tiny configs in about a
minute, on the CPU, and both reports say so at the top: it keeps the command from rotting.

Writes OUT/report.md (step, status, seconds, the last lines of each step's output) and
OUT/report.json (GPU name and driver from nvidia-smi, torch and CUDA versions, per step: command,
rc, seconds, output tail), with each step's full output in OUT/logs/, and prints report.md.
This process never imports torch (a subprocess reports its versions), so it holds no CUDA context
while the steps measure memory.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

TESTS = Path(__file__).resolve().parents[2] / "tests"  # the checkout's tests (gpu-marked ones)
FULL_BUDGET_S = 480  # the 8 minutes on one H100/H200
TAIL_LINES = 40  # output lines kept per step in report.json
KEY_LINES = 3  # last lines of a step's output shown in the table
# A dry step takes ~5-40 s on an idle 2-core machine; the timeout only guards against a hang
# (on a shared, busy machine the same step took 60 s).
DRY_TIMEOUT_S = 180


@dataclass
class Config:
    out: Path = Path("out/gpu-check")
    mode: str = "auto"  # auto: full on CUDA, dry without | full | dry (tiny configs on the CPU)
    only: list[str] = field(default_factory=list)  # step names to run (empty: all)


@dataclass
class Step:
    name: str
    args: list[str]  # after `python -m`
    timeout: float
    empty_ok: bool = False  # pytest exit 5 ("no tests collected") is "none collected", not a failure


def _bench(name: str, *sets: str) -> list[str]:
    return ["pdfnet_pipeline.cli", "bench", name, *[a for s in sets for a in ("--set", s)]]


def plan(full: bool) -> list[Step]:
    """The steps; full: real sizes on CUDA (timeouts summing to FULL_BUDGET_S), else tiny on the CPU."""
    gpu_tests = Step(
        "gpu tests", ["pytest", "-m", "gpu", "-q", str(TESTS)], 120 if full else DRY_TIMEOUT_S, empty_ok=True
    )
    if not full:
        return [
            gpu_tests,
            Step(
                "depth tiny",
                _bench(
                    "depth",
                    'arch="tiny"',
                    "images=2",
                    "batch_sizes=[2]",
                    "size=256",
                    "input_size=70",
                    "supervision_size=140",
                    "aspect_sizes=[[320,240],[240,320]]",
                    'device="cpu"',
                    "workers=0",
                    "write_threads=1",
                    "repeats=1",
                    'parts=["official","bf16"]',
                    "deviation_images=1",
                    "deviation_inputs=[70]",
                ),  # fmt: skip
                DRY_TIMEOUT_S,
            ),
            Step(
                "model 256 tiny",
                _bench("model", "sizes=[256]", 'preset="tiny"', 'device="cpu"', "isolate=false", "repeats=1"),
                DRY_TIMEOUT_S,
            ),
            Step(
                "train 256 tiny", _bench("train", "size=256", 'preset="tiny"', 'device="cpu"', "steps=1"), DRY_TIMEOUT_S
            ),
            Step("metrics tiny", _bench("metrics", "tiny=true"), DRY_TIMEOUT_S),
        ]
    depth = [
        Step(
            "depth official",
            _bench(
                "depth",
                'official_archs=["small","base","large"]',
                "images=8",
                "batch_sizes=[16]",
                "workers=8",
                "write_threads=8",
                "repeats=2",
                'parts=["official"]',
            ),  # fmt: skip
            120,
        ),
        Step(
            "depth bf16",
            _bench("depth", 'deviation_archs=["small","base","large"]', "deviation_images=4", 'parts=["bf16"]'),
            45,
        ),
    ]
    return [
        gpu_tests,
        *depth,
        Step(
            "model 1024",
            _bench("model", "sizes=[1024]", "repeats=3", "isolate=false", "checkpointing=[false,true]"),
            90,
        ),
        Step("train 1024", _bench("train", "size=1024", "steps=2", "max_batch=64"), 60),
        Step("metrics", _bench("metrics", "pairs=8", "repeats=1", "steady_pairs=2"), 45),
    ]


def _run_step(step: Step, log: Path) -> dict:
    """Runs one step in its own process group (killed whole on timeout: workers included)."""
    cmd = [sys.executable, "-m", *step.args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # a killed step keeps the output it printed
    start = time.perf_counter()
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=step.timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            rc, timed_out = proc.wait(), True
    seconds = time.perf_counter() - start
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    if timed_out:
        status = f"timeout ({step.timeout:.0f} s)"
    elif rc == 0:
        status = "ok"
    elif rc == 5 and step.empty_ok:
        status = "none collected"
    else:
        status = f"failed (rc {rc})"
    return {
        "step": step.name,
        "command": " ".join(["python", "-m", *step.args]),
        "rc": rc,
        "status": status,
        "seconds": round(seconds, 2),
        "timeout_s": step.timeout,
        "tail": lines[-TAIL_LINES:],
    }


def _sh(cmd: list[str]) -> str | None:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict:
    """GPU name and driver (nvidia-smi), torch and CUDA versions (from a short-lived subprocess)."""
    env: dict = {"python": sys.version.split()[0], "gpu": None, "driver": None}
    smi = _sh(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"]) if shutil.which("nvidia-smi") else None  # fmt: skip
    if smi:
        name, _, driver = smi.splitlines()[0].rpartition(",")
        env["gpu"], env["driver"] = name.strip(), driver.strip()
    probe = (
        "import json, torch; print(json.dumps({'torch': torch.__version__, 'cuda_build': torch.version.cuda, "
        "'cuda_available': torch.cuda.is_available(), 'device_count': torch.cuda.device_count()}))"
    )
    info = _sh([sys.executable, "-c", probe])
    env.update(json.loads(info.splitlines()[-1]) if info else {"torch": None, "cuda_available": False})
    return env


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render(header: str, env: dict, results: list[dict]) -> str:
    lines = [
        f"# {header}",
        "",
        f"GPU: {env['gpu'] or 'none'} (driver {env['driver'] or 'n/a'}); torch {env['torch']}, "
        f"CUDA build {env.get('cuda_build')}, CUDA available: {env['cuda_available']}. "
        "Depth and model weights are RANDOM: the figures are speed and memory only.",
        "",
        "| step | status | seconds | key figures (last lines of its output) |",
        "|---|---|---:|---|",
    ]
    for r in results:
        key = " ⏎ ".join(ln.strip() for ln in r["tail"][-KEY_LINES:])
        lines.append(f"| {r['step']} | {r['status']} | {r['seconds']:.1f} | {_cell(key)} |")
    total = sum(r["seconds"] for r in results)
    lines += ["", f"total {total:.1f} s; full output of each step in logs/", ""]
    for r in results:
        lines += [f"## {r['step']}: {r['status']}", "", f"`{r['command']}`", "", "```", *r["tail"][-12:], "```", ""]
    return "\n".join(lines)


def run(cfg: Config) -> dict:
    if cfg.mode not in ("auto", "full", "dry"):
        raise ValueError(f"bench gpu mode {cfg.mode!r}: choose auto, full or dry")
    env = environment()
    full = cfg.mode == "full" or (cfg.mode == "auto" and env["cuda_available"])
    if full:
        header = "GPU check: full run on CUDA"
    elif env["cuda_available"]:
        header = "GPU check: dry run (tiny configs on the CPU; CUDA present but not used)"
    else:
        header = "GPU check: no CUDA: dry run (tiny configs on the CPU)"
    steps = [s for s in plan(full) if not cfg.only or s.name in cfg.only]
    logs = cfg.out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    results = []
    for step in steps:
        print(f"[bench gpu] {step.name} (timeout {step.timeout:.0f} s) ...", flush=True)
        results.append(_run_step(step, logs / f"{step.name.replace(' ', '_')}.log"))
        print(f"[bench gpu] {step.name}: {results[-1]['status']} in {results[-1]['seconds']:.1f} s", flush=True)
    report = {"header": header, "full": full, "environment": env, "steps": results}
    md = render(header, env, results)
    (cfg.out / "report.md").write_text(md)
    (cfg.out / "report.json").write_text(json.dumps(report, indent=2))
    print(md)
    return report
