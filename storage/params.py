"""A dataset's chosen parameters (``params.json``) and the tuning report (``tune.json``) in its model folder."""

from __future__ import annotations

import json
from pathlib import Path

from model import ModelError, ModelParams
from storage.files import write_json_durably


def saved_params(model_dir: Path) -> ModelParams | None:
    """The dataset's tuned parameters (written by the first training's tuning or ``evaluate.py --tune
    --save``), or None when it has none.

    Raises ModelError with a one-line message when the file cannot be used.
    """
    path = Path(model_dir) / "params.json"
    if not path.exists():
        return None
    return read_params(path)


def read_params(path: Path) -> ModelParams:
    """Parameters from a params.json-shaped file; ModelError with a one-line message when it cannot be used."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: {exc}") from None
    return ModelParams.from_dict(data, str(path))


def save_params(model_dir: Path, params: ModelParams | None, report: dict | None = None) -> Path:
    """Write ``params.json`` (unless ``params`` is None) for good, and the tuning ``report`` beside it as
    ``tune.json``; return the params file's path."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    path = model_dir / "params.json"
    if report is not None:
        write_json_durably(model_dir / "tune.json", report)
    if params is not None:
        write_json_durably(path, params.as_dict())
    return path


def tuning_summary(model_dir: Path) -> dict | None:
    """The last tuning's validation figures from ``tune.json`` (None when there is none): what the status
    page shows, and what each published version carries for API hosts that have no such file."""
    try:
        report = json.loads((Path(model_dir) / "tune.json").read_text())
    except (OSError, ValueError):
        return None
    return {k: report.get(k) for k in ("served_valid_rmse", "default_valid_rmse", "valid_rmse", "fits",
                                       "seconds", "n_valid", "time_cap_hit")}
