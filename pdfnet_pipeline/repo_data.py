"""Data folders kept once at the repo's top level, found both in a checkout and in a wheel.

`stages/` and `data_manifests/official/` have one source each, in the repo; pyproject.toml maps
them into the wheel as `pdfnet_pipeline/stages/` and `pdfnet_pipeline/official_lists/`.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def repo_dir(in_repo: str, in_wheel: str) -> Path:
    """`in_repo` of a source checkout (plain or editable install), else the wheel's copy `in_wheel`."""
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").is_file():
        return checkout / in_repo
    return Path(str(resources.files("pdfnet_pipeline") / in_wheel))
