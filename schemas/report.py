"""The nightly label-disagreement report (``report.json``): which items, classes and labelers to re-check.

Written by ``labelaudit report`` beside ``report.html`` and ``relabel_queue.csv``; other tools read it.
Every rate comes with its count and a 95% Wilson score interval; a rate over zero labels is ``None``,
never 0. Glossary: a *label* is one human label on one item (one audit record with a human label);
the *truth estimate* of a label is the model's label for an item one person labeled, and the consensus
of the item's other labelers and the model for an item several people labeled (leave-one-out: a label
never votes for itself); a label *disagrees* when it differs from its truth estimate; a *relabel
request* is the serving policy's own verdict, stored with the record (``disagrees``).
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from labelaudit.schemas.audit import Verdict

REPORT_SCHEMA: Final = "labelaudit.report.v1"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class Rate(_Model):
    """``k`` of ``n`` with its 95% Wilson score interval; ``rate`` and the bounds are None when ``n`` is 0."""

    k: int = Field(ge=0)
    n: int = Field(ge=0)
    rate: float | None
    low: float | None
    high: float | None


class Window(_Model):
    since: datetime = Field(description="Inclusive, UTC.")
    until: datetime = Field(description="Exclusive, UTC.")
    label: str = Field(description="The dated folder's name: the night (2026-11-21) or since--until.")


class ModelSeen(_Model):
    model_name: str
    model_version: str
    records: int


class PreviousNights(_Model):
    """The same model's nights before the window, pooled, and the change to tonight. Compared on the
    disagreement with the model's label, which means the same every night (the truth estimate depends on
    how many items several people labeled that night)."""

    nights: list[date]
    model_disagreement: Rate
    relabel_requests: Rate
    change_points: float | None = Field(description="Tonight's model disagreement minus the pooled one, in points.")


class Headline(_Model):
    records: int = Field(description="Audit records of the reported model in the window (unlabeled included).")
    images_audited: int = Field(description="Distinct items.")
    labels: int = Field(
        description="Records that carry a human label (not those answering disagreement requests: relabel_answers)."
    )
    unlabeled: int
    multi_labeled_items: int = Field(description="Items with labels from two or more labelers.")
    disagreement: Rate = Field(description="Labels that differ from their truth estimate.")
    model_disagreement: Rate = Field(description="Labels that differ from the model's label (the trends' measure).")
    relabel_requests: int = Field(description="Labels the serving policy flagged (sent to relabel-requests).")
    previous: PreviousNights | None


class ClassRow(_Model):
    name: str
    disagreement: Rate = Field(description="Labels of this class that differ from their truth estimate.")
    relabel_requests: int
    predicted: int = Field(description="Labels whose model label is this class.")
    note: str | None = None


class Confusion(_Model):
    """``counts[i][j]``: labels where the human said ``classes[i]`` and the model ``classes[j]``."""

    classes: list[str]
    counts: list[list[int]]


class Transition(_Model):
    """``counts[i][j]``: the labeler's labels whose truth estimate is ``classes[i]`` and label ``classes[j]``;
    ``rows`` is each row normalised (``T[i][j]`` ≈ P(label j | truth i)), None for a row with no labels."""

    classes: list[str]
    counts: list[list[int]]
    rows: list[list[float] | None]


class ErrorEstimate(_Model):
    """A labeler's estimated error rate and its 95% interval, and where it comes from: ``agreement``
    (the labels of the items it shares with other labelers, Dawid–Skene's EM with a confusion matrix per
    labeler, bootstrap interval over those items); where the
    labeler shares too few items, ``model`` (its disagreement with the model, deconvolved with the model's
    confusion measured on clean held-out images, from the model card; bootstrap interval); without a card
    that has one, ``disagreement`` (its disagreement rate and Wilson interval, which also counts the
    model's own mistakes). ``audit`` (between the first two: a labeler sharing too few items but with enough of
    its labels in the random audit sample answered by someone else): the answers' mismatches, with the model's
    chance that each label is wrong as a predictor (prediction-powered inference; normal interval)."""

    rate: float | None
    low: float | None
    high: float | None
    source: Literal["agreement", "audit", "model", "disagreement"]
    answers: int | None = Field(default=None, description="For source audit: the labeler's labels with an answer.")


class LabelerRow(_Model):
    labeler_id: str = Field(description="'' for labels that came without a labeler id.")
    labels: int
    multi_labeled: int = Field(description="Of those, labels on items that others labeled too.")
    disagreement: Rate
    estimated_error: ErrorEstimate
    relabel_requests: int
    test: Literal["agreement z-test", "audit z-test", "Fisher exact"] | None = Field(
        description="The flag's test; None: untested."
    )
    p_value: float | None = Field(description="One-sided, against the pooled rate of the others in good standing.")
    p_adjusted: float | None = Field(description="Holm–Bonferroni adjusted over the labelers tested in its round.")
    flagged: bool
    flag_round: int | None = Field(default=None, description="The round of the step-down test that flagged it.")
    transition: Transition
    note: str | None = None


class FlagTest(_Model):
    alpha: float
    description: str
    tested: int
    flagged: list[str]
    rounds: int = Field(default=1, description="Rounds of the step-down test (the last one flags nobody new).")


class QueueItem(Verdict):
    """One relabel request in the queue, highest score first (``relabel_queue.csv`` has these columns)."""

    rank: int
    human_label: str
    other_labels: int = Field(description="Labels from other labelers on this item in the window.")
    agreeing_labels: int = Field(description="Of those, how many give the same label as this one.")
    created_at: str
    answers: int = Field(default=0, description="Answers to this request stored so far (relabel_answers).")
    answer: str | None = Field(default=None, description="One answer's label (the first alphabetically), if any.")
    thumbnail: bool = Field(description="Whether the page shows the image (found through --images).")


class NightRow(_Model):
    night: date
    model_name: str
    model_version: str
    records: int
    model_disagreement: Rate = Field(description="Labels that differ from the model's label.")
    relabel_requests: int


class Consensus(_Model):
    """How the truth estimate of a multi-labeled item is formed (CROWDLAB-like, see docs/report.md)."""

    labeler_pairs: int = Field(description="Pairs of labels from two labelers on the same item.")
    annotator_agreement: float | None = Field(description="P: mean pairwise agreement between labelers.")
    model_weight: float = Field(description="c in score(k) = votes(k) + c * p_model(k).")


class AnswerRow(_Model):
    """Answers to the relabel requests of one group: the labels of one questioned labeler, or the labels the
    model questioned in favour of one class."""

    group: str = Field(description="The questioned labeler, or the model's label (per_class).")
    answered: int = Field(description="Answers stored in the window to the group's requests.")
    model: int = Field(description="Of those, answers that give the model's label: the label was changed.")
    kept: int = Field(description="Answers that give the questioned label again: the model was wrong to ask.")
    other: int = Field(description="Answers that give neither.")
    changed: Rate = Field(description="model of answered: how often a second look sided with the model.")


class RelabelAnswers(_Model):
    """Labels that answer relabel requests (``answers`` on the stream or ``/v1/audit``), stored in the window.
    Answers to disagreement requests measure the relabel queue; they are kept out of the labelers' numbers
    above (the model picked their items), though each still votes in its item's consensus."""

    answered: int = Field(default=0, description="Answers to disagreement requests about this model's labels.")
    precision: Rate = Field(
        default_factory=lambda: Rate(k=0, n=0, rate=None, low=None, high=None),
        description="Of those, answers that give the model's label: the queue's precision, as the second "
        "person sees it.",
    )
    per_labeler: list[AnswerRow] = Field(default_factory=list, description="By questioned labeler.")
    per_class: list[AnswerRow] = Field(
        default_factory=list,
        description="By the model's label: where the queue is often wrong, the model's doubts about that class "
        "are least worth a reviewer's time.",
    )
    audit_sample: int = Field(default=0, description="Answers to audit-sample requests (counted above as labels).")
    other_models: int = Field(
        default=0, description="Answers to disagreement requests about other models' labels, or to requests not found."
    )


class Report(_Model):
    schema_: Literal["labelaudit.report.v1"] = Field(default=REPORT_SCHEMA, alias="schema")
    generated_at: datetime
    store: str = Field(description="The store's kind: sqlite or postgresql (never its URL).")
    window: Window
    model: ModelSeen | None = Field(description="The model whose verdicts are reported; None for an empty window.")
    other_models: list[ModelSeen] = Field(description="Other models seen in the window, not in these numbers.")
    classes: list[str]
    class_source: str
    headline: Headline
    per_class: list[ClassRow]
    confusion: Confusion
    consensus: Consensus
    labelers: list[LabelerRow]
    flag_test: FlagTest
    relabel_queue: list[QueueItem]
    relabel_answers: RelabelAnswers = Field(default_factory=RelabelAnswers)
    trends: list[NightRow]
    notes: list[str] = Field(description="Plain statements about what is missing or thin (empty night, ...).")
