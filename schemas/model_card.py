"""The model card: everything serving and the audit need to use an exported model correctly."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

ResizeRule = Literal["stretch", "shorter_side_center_crop"]


class PreprocessSpec(BaseModel):
    """The exact input pipeline: decode, convert, resize, scale to [0, 1], normalise, lay out NCHW.

    ``labelaudit.imaging.preprocess`` implements it once; training and serving both import it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    height: int = Field(gt=0)
    width: int = Field(gt=0)
    channels: Literal[1, 3] = Field(description="1 = Pillow mode 'L', 3 = mode 'RGB'.")
    mean: tuple[float, ...] = Field(description="Per channel, applied after scaling pixels to [0, 1].")
    std: tuple[float, ...]
    resize: ResizeRule = Field(
        default="stretch",
        description="'stretch': resize straight to height x width; 'shorter_side_center_crop': scale the "
        "shorter side to fit, then crop the centre.",
    )
    crop_pct: float = Field(
        default=1.0,
        gt=0,
        le=1,
        description="With 'shorter_side_center_crop': the crop's share of the resized image (timm's crop_pct; "
        "torchvision's crop_size / resize_size, e.g. 224 / 256 = 0.875). 1.0 crops nothing beyond the aspect.",
    )
    resample: Literal["bilinear", "nearest", "bicubic"] = "bilinear"
    jpeg_draft: bool = Field(
        default=False,
        description="Decode JPEGs at a reduced scale (Pillow's draft(), DCT-domain scaling) no smaller than the "
        "resize needs, before the resize. Part of the spec because it changes the pixels: training, export "
        "parity and serving all follow it.",
    )
    layout: Literal["NCHW"] = "NCHW"
    dtype: Literal["float32"] = "float32"

    @model_validator(mode="after")
    def _one_stat_per_channel(self) -> PreprocessSpec:
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"mean and std need {self.channels} value(s) each")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be positive")
        return self


class EpochMetrics(BaseModel):
    """What every training run reports after each epoch."""

    epoch: int
    train_loss: float
    val_acc: float | None = Field(description="Accuracy on the clean held-out split, if the manifest has one.")
    trusted_acc: float = Field(description="Accuracy on the trusted set (eval mode, no augmentation).")
    lr: float
    seconds: float
    images_per_s: float = Field(description="Images per second of the whole epoch, wall clock.")
    step_images_per_s: float | None = Field(
        default=None, description="Images per second of the training steps alone (forward, backward, update)."
    )
    loader_images_per_s: float | None = Field(
        default=None,
        description="What the data loader can deliver: images per second of reading and decoding, summed over "
        "its workers. Below step_images_per_s, decoding is the bottleneck.",
    )
    corrected_fraction: float | None = Field(
        default=None, description="FasTEN: share of untrusted labels replaced by the model's correction."
    )
    pseudo_labeled_fraction: float | None = Field(
        default=None,
        description="Semi-supervised: share of the epoch's pool rows whose teacher prediction reached the "
        "pseudo-label threshold (the rest gave no loss).",
    )
    transition_matrix: list[list[float]] | None = Field(
        default=None, description="The current estimate of T[i][j] = P(noisy label j | true class i)."
    )


class GateResult(BaseModel):
    """Whether the trained model may be exported: never worse than its starting point unless forced."""

    passed: bool
    metric: str
    initial: float | None = Field(description="Classifier A (the starting weights) on that metric.")
    final: float
    reason: str


class ParityResult(BaseModel):
    """ONNX against torch on the same preprocessed images."""

    images: int
    argmax_agreement: float
    max_abs_prob_diff: float
    tolerance: float


class LabelerErrorRate(BaseModel):
    """A labeler's estimated error rate with its 95% interval: from its disagreement with the model
    (``labelaudit.deconvolve``), from a QA pass's checks of its images (``labelaudit.audited``), or, where
    images carry several labels, from those images' labels (Dawid–Skene over them, ``labelaudit.dawid_skene``)."""

    rate: float
    low: float
    high: float
    disagreement: float = Field(description="Its raw disagreement with the model's label, for comparison.")
    source: Literal["model", "audit", "agreement"] = Field(
        default="model",
        description="model: deconvolved disagreement with the model; audit: from the checked (trusted) labels of its "
        "images, the model as predictor; agreement: from the other labelers' labels on the same images "
        "(Dawid-Skene).",
    )
    answers: int | None = Field(default=None, description="For source audit: its labels whose image was checked.")


class ModelMetrics(BaseModel):
    val_acc: float | None = None
    test_acc: float | None = None
    trusted_acc: float
    initial_trusted_acc: float | None = None
    initial_val_acc: float | None = None
    initial_test_acc: float | None = None
    history: list[EpochMetrics] = Field(default_factory=list)


class ModelCard(BaseModel):
    """Written beside every exported model and served at ``GET /v1/models``."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    schema_version: Literal[1] = 1
    name: str
    version: str
    created_at: datetime
    classes: list[str] = Field(min_length=2)
    preprocess: PreprocessSpec
    architecture: str
    method: str
    init: str = Field(description="Where training started: a checkpoint path's name, or 'scratch'.")
    onnx_input: str = "images"
    onnx_outputs: list[str] = Field(default_factory=lambda: ["probabilities", "logits"])
    metrics: ModelMetrics
    gate: GateResult
    transition_matrix: list[list[float]] | None = Field(
        default=None, description="Final estimate of T[i][j] = P(noisy label j | true class i), K x K."
    )
    labeler_transition_matrices: dict[str, list[list[float]]] = Field(
        default_factory=dict,
        description="Per labeler_id: T_l[i][j] = P(labeler gives j | true class i) over its training rows, by "
        "Dawid-Skene EM with the model's probabilities as the prior (so it works with one label per item); the "
        "labeler-posterior-v1 policy reads them.",
    )
    labeler_counts: dict[str, int] = Field(default_factory=dict)
    labeler_error_rates: dict[str, LabelerErrorRate] = Field(
        default_factory=dict,
        description="Per labeler_id: its error rate on the training rows, its disagreement with the model's "
        "label there less the model's own mistakes (``confusion``), Dawid-Skene EM with the model as an annotator "
        "of known confusion. The model fitted those labels, so a rate reads low where it memorised them; the "
        "nightly report makes the same estimate on images the model never trained on. Where training images carry "
        "several labels, a labeler the agreement between labelers identifies gets that estimate (source: agreement).",
    )
    disagreement_thresholds: list[float] = Field(
        description="Per class k: the mean predicted probability of k over held-out images labeled k "
        "(confident learning's per-class threshold). A human label k whose probability falls below it is "
        "a candidate error."
    )
    thresholds_source: str = Field(description="Which images the thresholds were computed on.")
    confusion: list[list[int]] | None = Field(
        default=None,
        description="C[i][k]: how many held-out images of true class i the model labels k (the same images as "
        "the thresholds; optimistic when that is the trusted set, which training fitted). The report "
        "deconvolves each labeler's disagreement with the model by it.",
    )
    parity: ParityResult | None = None
    data_version: str = Field(description="sha256 of the training manifest.")
    code_version: str = Field(description="labelaudit version and git commit, if known.")
    training_config: dict = Field(default_factory=dict)
    onnx_sha256: str | None = None

    @model_validator(mode="after")
    def _shapes_match_classes(self) -> ModelCard:
        k = len(self.classes)
        if len(self.disagreement_thresholds) != k:
            raise ValueError(f"disagreement_thresholds needs {k} values, one per class")
        if self.confusion is not None and (len(self.confusion) != k or any(len(r) != k for r in self.confusion)):
            raise ValueError(f"confusion must be {k} x {k}")
        matrices = list(self.labeler_transition_matrices.values())
        if self.transition_matrix is not None:
            matrices.append(self.transition_matrix)
        for m in matrices:
            if len(m) != k or any(len(row) != k for row in m):
                raise ValueError(f"transition matrices must be {k} x {k}")
        return self
