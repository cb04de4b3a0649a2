"""`--help` stays light: no command's help imports torch, cv2, timm or transformers, nor the
server's fastapi / starlette / uvicorn / python-multipart.

Each case runs the console entry (`cli.main`) in a fresh interpreter and lists `sys.modules` at
exit, so an import anywhere in the chain counts, however it was made.
"""

import subprocess
import sys

import pytest

HEAVY = {"torch", "cv2", "timm", "transformers", "fastapi", "starlette", "uvicorn", "python_multipart"}

# What the `pdfnet-pipeline` console script runs, then the modules it left loaded (on stderr).
PROBE = """
import sys
from pdfnet_pipeline.cli import main
try:
    main()
finally:
    print("modules:", " ".join(sorted(sys.modules)), file=sys.stderr)
"""


def loaded_modules(*args: str) -> tuple[set[str], str]:
    res = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    line = next(x for x in res.stderr.splitlines() if x.startswith("modules: "))
    return set(line.split()[1:]), res.stdout


@pytest.mark.parametrize(
    "args, shown",
    [
        (["--help"], "predict"),
        (["metrics", "--help"], "--pred"),
        (["predict", "--help"], "--checkpoint"),
        (["model", "info", "--help"], "--variant"),
        (["data", "manifest", "--help"], "--allow-mismatch"),
        (["store", "export", "--help"], "--out"),
        (["stage", "run", "--help"], "--print-config"),
        (["bench", "--help"], "metrics"),
        (["serve", "--help"], "--max-batch"),
    ],
)
def test_help_imports_no_heavy_module(args, shown):
    modules, out = loaded_modules(*args)
    assert shown in out  # the help really printed
    commands = {"pdfnet_pipeline.eval.commands", "pdfnet_pipeline.model.commands", "pdfnet_pipeline.serve.commands"}
    assert {"typer", *commands} <= modules  # commands loaded
    assert sorted({m.split(".")[0] for m in modules} & HEAVY) == []
