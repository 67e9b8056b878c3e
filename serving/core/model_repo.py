"""Find the served model in a Triton model repository: its ONNX file and its model card."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from labelaudit.errors import LabelAuditError
from labelaudit.schemas.model_card import ModelCard


class ModelNotFound(LabelAuditError):
    status_code = 503
    reason = "model_not_found"


@dataclass(frozen=True)
class ServedModel:
    name: str
    version: str
    onnx_path: Path
    card: ModelCard


def resolve_model(repo: Path, name: str, version: str | None = None) -> ServedModel:
    """``<repo>/<name>/<version>/`` with ``model.onnx`` and ``model_card.json``; the highest numeric
    version when ``version`` is None. Raises ``ModelNotFound`` saying what is missing."""
    model_dir = Path(repo) / name
    if not model_dir.is_dir():
        raise ModelNotFound(f"no model {name!r} in repository {repo} (run `labelaudit export`)")
    if version is None:
        versions = sorted((int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()), reverse=True)
        if not versions:
            raise ModelNotFound(f"{model_dir} has no numeric version folder")
        version = str(versions[0])
    version_dir = model_dir / version
    onnx_path, card_path = version_dir / "model.onnx", version_dir / "model_card.json"
    for needed in (onnx_path, card_path):
        if not needed.is_file():
            raise ModelNotFound(f"{needed} is missing")
    try:
        card = ModelCard.model_validate_json(card_path.read_text())
    except ValidationError as exc:
        raise ModelNotFound(f"{card_path} is not a valid model card: {exc.error_count()} error(s)") from exc
    return ServedModel(name=name, version=version, onnx_path=onnx_path, card=card)
