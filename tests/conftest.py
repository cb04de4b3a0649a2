from pathlib import Path

import pytest

REAL = Path(__file__).parent / "data" / "real"


@pytest.fixture(scope="session")
def real_dir() -> Path:
    return REAL


@pytest.fixture(scope="session")
def sample_root(tmp_path_factory) -> Path:
    """The generated DIS-layout sample (small counts), shared read-only by the session's tests."""
    from pdfnet_pipeline.data.sample import generate_sample

    root = tmp_path_factory.mktemp("sample")
    generate_sample(root, per_split=1, train=3, seed=0)
    return root
