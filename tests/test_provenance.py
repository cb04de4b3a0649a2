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
