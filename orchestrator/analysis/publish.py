"""Logging the analysis to Weights & Biases: a run of job_type `analysis` in the experiment's group."""
from __future__ import annotations

import io
import os

import pyarrow as pa
import yaml


def _tracking_settings(config: dict[str, str]) -> tuple[str, str | None]:
    """(project, entity) from the experiment's stored config, if it has a `tracking` block."""
    for name, text in config.items():
        if not name.endswith((".yaml", ".yml", ".json")):
            continue
        try:
            doc = yaml.safe_load(text)  # JSON is YAML
        except yaml.YAMLError:
            continue
        tracking = doc.get("tracking") if isinstance(doc, dict) else None
        if isinstance(tracking, dict):
            return tracking.get("project") or "lth-sweep", tracking.get("entity")
    return "lth-sweep", None


def log_to_wandb(mode: str, experiment: str, config: dict[str, str], local_dir: str,
                 tables: list[tuple[str, str, pa.Table]], figures: dict[str, bytes],
                 summary: dict, console) -> str | None:
    """Log and finish; returns the run's local directory."""
    import wandb
    from PIL import Image

    from orchestrator.tracking import decide_mode

    mode, warning = decide_mode(mode)  # as `lth run` decides: API key or netrc, and a reachable service
    if warning:
        console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)
    project, entity = _tracking_settings(config)
    suffix = os.urandom(4).hex()  # the id found by `lth rm` (orchestrator/remove.py); the name unique in the project
    run = wandb.init(project=project, entity=entity, group=experiment, job_type="analysis",
                     name=f"analysis-{experiment}-{suffix}", mode=mode, dir=local_dir,
                     id=f"analysis-{experiment}-{suffix}",
                     config={"experiment": experiment, **{k: v for k, v in summary.items()
                                                          if not isinstance(v, dict)}},
                     reinit="finish_previous")
    try:
        payload = {}
        for stem, _title, t in tables:
            payload[f"table/{stem}"] = wandb.Table(columns=t.column_names,
                                                   data=[list(r.values()) for r in t.to_pylist()])
        for name, png in figures.items():
            payload[f"figure/{name}"] = wandb.Image(Image.open(io.BytesIO(png)).convert("RGB"))
        run.log(payload)
        for k, v in summary.items():
            if not isinstance(v, dict):
                run.summary[k] = v
        return run.dir
    finally:
        run.finish()
