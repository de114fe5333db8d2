"""Run-folder logging shared by every stage: ``metrics.jsonl`` plus TensorBoard / wandb / mlflow.

``metrics.jsonl`` holds one JSON object per logged step (docs/design.md §8). On resume the log is cut back to
the checkpoint's step so that a resumed run's log reads as if it had never stopped.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


def _plain(v: Any) -> Any:
    if hasattr(v, "item") and getattr(v, "ndim", 0) == 0:
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/inf; keep them visible as strings
    return v


def read_metrics(path: str | Path) -> list[dict]:
    """All records of a ``metrics.jsonl`` (missing file → empty list)."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def read_snapshots(ppo_dir: str | Path) -> dict | None:
    """A PPO run folder's ``snapshots.json`` ({chosen, snapshots: [row per held-out evaluation]}); None when PPO
    had no held-out prompts."""
    path = Path(ppo_dir) / "snapshots.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def truncate_metrics(path: str | Path, last_step: int) -> None:
    """Drop records logged after ``last_step`` (they belong to work the checkpoint does not hold)."""
    path = Path(path)
    if not path.exists():
        return
    keep = [r for r in read_metrics(path) if r.get("step", -1) <= last_step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in keep), encoding="utf-8")
    os.replace(tmp, path)


def clear_tensorboard(folder: Path) -> None:
    """Remove a previous run's TensorBoard event files, so a fresh run in the same folder shows its curves alone."""
    for f in Path(folder).glob("events.out.tfevents.*"):
        f.unlink()


class MetricsLogger:
    """Append metrics to ``out_dir/metrics.jsonl`` and mirror them to the chosen tracker."""

    def __init__(self, out_dir: str | Path, report_to: str = "tensorboard", run_name: str | None = None, config: dict | None = None,
                 purge_step: int | None = None):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.out_dir / "metrics.jsonl"
        self.report_to = report_to
        self._tb = self._wandb = self._mlflow = None
        if report_to == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            # a resumed run drops the events a crashed run logged past its checkpoint (purge_step: the next step)
            self._tb = SummaryWriter(str(self.out_dir / "tb"), purge_step=purge_step)
        elif report_to == "wandb":
            try:
                import wandb
            except ImportError:
                raise RuntimeError("--report-to wandb needs `pip install wandb`") from None
            os.environ.setdefault("WANDB_MODE", "offline" if os.environ.get("HF_HUB_OFFLINE") else os.environ.get("WANDB_MODE", "online"))
            self._wandb = wandb.init(project="rlhfkit", name=run_name or self.out_dir.name, config=config, dir=str(self.out_dir))
        elif report_to == "mlflow":
            try:
                import mlflow
            except ImportError:
                raise RuntimeError("--report-to mlflow needs `pip install mlflow`") from None
            mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI", (self.out_dir / "mlruns").as_uri()))
            self._mlflow = mlflow
            mlflow.start_run(run_name=run_name or self.out_dir.name)
            if config:
                mlflow.log_params({k: str(v)[:250] for k, v in config.items()})

    def log(self, step: int, metrics: dict[str, Any]) -> dict:
        rec = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
        numeric = {k: v for k, v in rec.items() if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self._tb is not None:
            for k, v in numeric.items():
                self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log(numeric, step=step)
        if self._mlflow is not None:
            self._mlflow.log_metrics(numeric, step=step)
        return rec

    def close(self) -> None:
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
        if self._mlflow is not None:
            self._mlflow.end_run()
