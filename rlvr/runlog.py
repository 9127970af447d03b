"""Where a run's numbers go: TensorBoard scalars and text, plus `metrics.jsonl` (one row per step)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter


class RunLogger:
    def __init__(self, run_dir: Path, resume_step: int = 0):
        """On resume, drop what a crashed run logged after its last checkpoint (`resume_step`)."""
        self.path = run_dir / "metrics.jsonl"
        if self.path.exists():
            keep = [line for line in self.path.read_text().splitlines() if line and _step(line) <= resume_step]
            self.path.write_text("".join(line + "\n" for line in keep))
        self.writer = SummaryWriter(str(run_dir), purge_step=resume_step + 1 if resume_step else None)
        self._file = self.path.open("a")

    def scalars(self, step: int, metrics: dict[str, float]) -> None:
        clean = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
        for k, v in clean.items():
            self.writer.add_scalar(k, v, step)
        self._file.write(json.dumps({"step": step, **clean}) + "\n")
        self._file.flush()

    def hparams(self, params: dict, metric_tags: list[str]) -> None:
        """Hyperparameters for TensorBoard's HParams tab (seeds and experiments can be filtered there)."""
        from torch.utils.tensorboard.summary import hparams

        clean = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in params.items()}
        exp, ssi, sei = hparams(clean, {tag: 0.0 for tag in metric_tags})
        for summary in (exp, ssi, sei):
            self.writer.file_writer.add_summary(summary)

    def text(self, tag: str, text: str, step: int) -> None:
        self.writer.add_text(tag, text, step)

    def close(self) -> None:
        self.writer.close()
        self._file.close()


def _step(line: str) -> int:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return 1 << 62  # a torn last line from a crash: dropped


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
