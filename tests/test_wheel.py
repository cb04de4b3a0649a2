"""The wheel carries what the commands read: built from a copy of the sources, installed into a
fresh venv and run from an empty folder, nothing reaches back into the repo.

Offline and without downloading torch: the build uses this interpreter's setuptools
(--no-build-isolation), the install skips dependencies, and the venv sees this interpreter's
installed packages through a .pth file (read after its own site-packages, so the wheel wins).
"""

import json
import os
import shutil
import site
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
# What `pip wheel` reads: pyproject.toml maps stages/ and data_manifests/official/ into the package.
BUILD_INPUTS = ["pyproject.toml", "README.md", "pdfnet_pipeline", "stages", "data_manifests/official"]


def _check(cmd: list, **kw) -> subprocess.CompletedProcess:
    res = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert res.returncode == 0, f"{cmd}\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
    return res


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    for name in BUILD_INPUTS:
        src, dst = REPO / name, tmp / "src" / name
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    _check([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", tmp / "dist", tmp / "src"])
    (found,) = (tmp / "dist").glob("pdfnet_pipeline-*.whl")
    return found


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("venv") / "venv"
    _check([sys.executable, "-m", "venv", "--without-pip", root])
    (site_dir,) = root.glob("lib/python3*/site-packages")
    host = [*site.getsitepackages(), site.getusersitepackages()]
    (site_dir / "host-packages.pth").write_text("\n".join(host) + "\n")
    # --ignore-installed: the host's own (editable) pdfnet-pipeline is left alone, not replaced.
    _check([root / "bin/python", "-m", "pip", "-q", "install", "--no-deps", "--no-index", "--ignore-installed", wheel])
    return root


def run_installed(venv: Path, cwd: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # no source tree on the path
    return _check([venv / "bin" / args[0], *args[1:]], cwd=cwd, env=env).stdout


def test_wheel_holds_every_module_and_the_stage_files(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {p.relative_to(REPO).as_posix() for p in (REPO / "pdfnet_pipeline").rglob("*.py")}
    assert sources - names == set()  # a subpackage missing from pyproject's list shows here
    stages = {f"pdfnet_pipeline/stages/{p.name}" for p in (REPO / "stages").glob("*.toml")}
    assert {"pdfnet_pipeline/stages/depth.toml", "pdfnet_pipeline/stages/train.toml"} <= stages <= names
    assert "pdfnet_pipeline/official_lists/DIS-VD.txt" in names
    static = {f"pdfnet_pipeline/serve/static/{p.name}" for p in (REPO / "pdfnet_pipeline/serve/static").iterdir()}
    assert {"pdfnet_pipeline/serve/static/index.html", "pdfnet_pipeline/serve/static/app.js"} <= static <= names


def test_installed_commands_run_from_any_folder(venv, tmp_path):
    where = run_installed(venv, tmp_path, "python", "-c", "import pdfnet_pipeline; print(pdfnet_pipeline.__file__)")
    assert Path(where.strip()).is_relative_to(venv)  # the wheel's copy, not the repo's
    assert " stage " in run_installed(venv, tmp_path, "pdfnet-pipeline", "--help")

    depth = json.loads(run_installed(venv, tmp_path, "pdfnet-pipeline", "stage", "run", "depth", "--print-config"))
    assert depth["input_size"] == 518 and depth["size"] == 1024
    assert (depth["models"]["large"]["arch"], depth["models"]["large"]["weights"]) == ("large", "hub")
    train = json.loads(run_installed(venv, tmp_path, "pdfnet-pipeline", "stage", "run", "train", "--print-config"))
    assert train["epochs"] == 100 and train["optim"]["lr"] == 1e-5
    smoke = run_installed(
        venv, tmp_path, "pdfnet-pipeline", "stage", "run", "train", "--profile", "smoke", "--print-config"
    )
    assert json.loads(smoke)["model"]["preset"] == "tiny"
    evaluation = json.loads(run_installed(venv, tmp_path, "pdfnet-pipeline", "stage", "run", "eval", "--print-config"))
    for name in ("depth", "train", "eval"):  # every top-level default of the repo's stage files
        printed = {"depth": depth, "train": train, "eval": evaluation}[name]
        defaults = tomllib.loads((REPO / "stages" / f"{name}.toml").read_text())
        scalars = {k: v for k, v in defaults.items() if not isinstance(v, dict)}
        assert {k: printed[k] for k in scalars} == scalars


def test_installed_manifest_check_has_the_official_lists(venv, tmp_path):
    code = "from pdfnet_pipeline.data.manifest import official_names; print(len(official_names('DIS-VD')))"
    assert run_installed(venv, tmp_path, "python", "-c", code).strip() == "470"
