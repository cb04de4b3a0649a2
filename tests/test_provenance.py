"""The random-weight labels: what the numbers of such a run measure, and predict's warning."""

from pdfnet_pipeline import provenance
from pdfnet_pipeline.model.checkpoint import DepthSettings


def test_random_label_says_what_the_numbers_measure():
    reasons = [
        "PDFNet (tiny preset) trained from random initial weights",
        "depth maps from randomly initialised DAM v2",
    ]
    assert provenance.random_label([]) is None
    assert provenance.random_label(reasons) == (
        "RANDOM-WEIGHT RUN: PDFNet (tiny preset) trained from random initial weights; depth maps from randomly "
        "initialised DAM v2: the numbers measure learning on this data, not a trained PDFNet on DIS-5K"
    )


def test_predict_warning_names_each_random_model():
    demo = DepthSettings(arch="tiny", weights="random", seed=2, input_size=252, size=256, pdfnet_random_init=True)
    assert provenance.predict_warning("tiny", True, "tiny", demo) == (
        "RANDOM-WEIGHT MODELS: depth: DAM v2 tiny with random weights; PDFNet tiny preset trained from random "
        "init on depth maps of a random-weight DAM v2: these masks show the pipeline, not a trained PDFNet"
    )
    assert provenance.predict_warning("large", True, "reference", None) == (
        "RANDOM-WEIGHT MODELS: depth: DAM v2 large with random weights: these masks show the pipeline, not a "
        "trained PDFNet"
    )
    assert provenance.predict_warning("large", False, "reference", None) is None
    assert provenance.predict_warning("large", False, "reference", DepthSettings(pdfnet_random_init=False)) is None


def test_a_fine_tune_of_a_random_init_model_still_says_so(tmp_path):
    """init_from a model file that records a random start (the demo's best.safetensors) keeps the
    label; a released or trained start (no record, or a .pth) does not get it."""
    import torch

    from pdfnet_pipeline.model import PDFNetConfig, build_pdfnet
    from pdfnet_pipeline.model.checkpoint import save_model

    torch.manual_seed(0)
    model = build_pdfnet(PDFNetConfig(preset="tiny", backbone_weights="random"))
    save_model(model, tmp_path / "demo.safetensors", DepthSettings(arch="tiny", pdfnet_random_init=True))
    save_model(model, tmp_path / "trained.safetensors", DepthSettings(pdfnet_random_init=False))
    save_model(model, tmp_path / "release.safetensors")  # a converted release records nothing
    tiny = {"preset": "tiny", "backbone_weights": "random"}
    assert provenance.random_weight_reasons([], tiny, str(tmp_path / "demo.safetensors")) == [
        "PDFNet (tiny preset) fine-tuned from a model trained from random initial weights"
    ]
    for start in ("trained.safetensors", "release.safetensors", "PDFNet_Best.pth"):
        assert provenance.random_weight_reasons([], tiny, str(tmp_path / start)) == [], start
    assert provenance.random_weight_reasons([], tiny) == ["PDFNet (tiny preset) trained from random initial weights"]
