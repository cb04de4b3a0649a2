"""Is this run's output meaningful? Random DAM weights or a random PDFNet init say it is not,
and every place that shows results (training strips, eval table, curves, sheets, predict) says so.

Also what a trained model file records about its inputs (`trained_depth`): the depth settings of
its training stores, read through the store's reader, so predict computes the same depth map."""

from __future__ import annotations

from pathlib import Path


def random_weight_reasons(stores: list[Path], model: dict, init_from: str = "") -> list[str]:
    """Why the numbers do not measure a trained PDFNet, if they don't (empty: real weights throughout)."""
    from pdfnet_pipeline.store import open_read

    reasons = set()
    for path in stores:
        models = open_read(path).models
        weights = [m.get("weights", "") if isinstance(m, dict) else m for m in models.values()]
        if any(str(w).lower() == "random" for w in weights):
            reasons.add("depth maps from randomly initialised DAM v2")
    if _random_start(model, init_from):
        how = "fine-tuned from a model trained from" if init_from else "trained from"
        reasons.add(f"PDFNet ({model.get('preset', '?')} preset) {how} random initial weights")
    return sorted(reasons)


def _random_start(model: dict, init_from: str) -> bool:
    """Did this PDFNet's training start from random weights, at first hand or through init_from (a
    project model file that records it was trained from random init, e.g. the demo's)? A released
    .pth, a Hub id or a file without the record counts as trained."""
    if not init_from:
        return model.get("backbone_weights", "random") == "random"
    from pdfnet_pipeline.model.checkpoint import CheckpointError, read_depth

    path = Path(init_from)
    if path.is_dir() and (path / "model.safetensors").is_file():
        path = path / "model.safetensors"  # a save_pretrained folder
    if not (path.is_file() and path.suffix == ".safetensors"):
        return False
    try:
        depth = read_depth(path)
    except CheckpointError:
        return False
    return bool(depth and depth.pdfnet_random_init)


def random_label(reasons: list[str]) -> str | None:
    if not reasons:
        return None
    return (
        "RANDOM-WEIGHT RUN: "
        + "; ".join(reasons)
        + ": the numbers measure learning on this data, not a trained PDFNet on DIS-5K"
    )


def trained_depth(stores: list[Path], model: dict, init_from: str = ""):
    """The `model.checkpoint.DepthSettings` a model trained on `stores` records: the DAM v2 model
    and input mode of the map that validation, eval and predict feed it (`data.dataset.VAL_DEPTH`),
    and the store side. None when the stores lack those records or disagree on them (the file then
    records nothing, and predict uses its defaults or flags)."""
    from pdfnet_pipeline.data.dataset import VAL_DEPTH
    from pdfnet_pipeline.depth.stage import recorded_settings
    from pdfnet_pipeline.model.checkpoint import DepthSettings
    from pdfnet_pipeline.store import open_read

    found = [recorded_settings(open_read(path), VAL_DEPTH) for path in stores]
    if not found or any(f is None or f != found[0] for f in found):
        return None
    return DepthSettings(**found[0], pdfnet_random_init=_random_start(model, init_from))


def predict_warning(dam_arch: str, dam_random: bool, preset: str, trained) -> str | None:
    """The one line predict prints when a model in the way has random weights (None: neither).
    `trained`: the checkpoint's recorded `DepthSettings` (None: not recorded)."""
    parts = []
    if dam_random:
        parts.append(f"depth: DAM v2 {dam_arch} with random weights")
    if trained is not None and (trained.pdfnet_random_init or trained.weights == "random"):
        init = "trained from random init" if trained.pdfnet_random_init else "trained"
        data = " on depth maps of a random-weight DAM v2" if trained.weights == "random" else ""
        parts.append(f"PDFNet {preset} preset {init}{data}")
    if not parts:
        return None
    return "RANDOM-WEIGHT MODELS: " + "; ".join(parts) + ": these masks show the pipeline, not a trained PDFNet"
