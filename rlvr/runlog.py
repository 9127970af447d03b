"""Where a run's numbers go: TensorBoard scalars and text, plus `metrics.jsonl` (one row per step)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter


# The panels TensorBoard's Custom Scalars tab opens on, written into every run (TensorBoard merges the
# runs' layouts and drops duplicate charts). Line charts overlay every run whose tags match; margin
# charts draw an experiment's mean with its 95% band from its `aggregate/band` run (rlvr compare,
# rlvr seeds, rlvr recipe write it: the band tags are `band/<tag>/{mean,low,high}`).
HEADLINE = {
    "held-out pass rate": ["eval/heldout/greedy_pass_rate", "eval/heldout/sampled_pass_rate"],
    "held-out pass rate by recipe stage (x: 0 pretrain, 1 sft, 2 dpo, 3 rlvr)": ["heldout/pass@1"],
    "reward": ["reward/mean"],
    "KL to the reference": ["policy/kl"],
}


def headline_layout() -> dict:
    """`SummaryWriter.add_custom_scalars` layout: the headline tags of each run, and each experiment's mean with its band."""
    lines = {title: ["Multiline", [f"^{t}$" for t in tags]] for title, tags in HEADLINE.items()}
    bands = {f"{tag}: mean and 95% interval over seeds": ["Margin", [f"band/{tag}/mean", f"band/{tag}/low", f"band/{tag}/high"]]
             for tags in HEADLINE.values() for tag in tags}
    return {"rlvr: every run": lines, "rlvr: mean over seeds, 95% band": bands}


def write_runs(runs: dict[Path, dict[str, list[tuple[int, float]]]]) -> None:
    """Scalar series into TensorBoard runs ({run folder: {tag: [(step, value)]}}), each with the headline layout;
    what those folders held before is replaced."""
    for run_dir, series in runs.items():
        for old in Path(run_dir).glob("events.out.tfevents.*"):  # derived runs are rewritten whole, never appended to
            old.unlink()
        writer = SummaryWriter(str(run_dir))
        try:
            writer.add_custom_scalars(headline_layout())
            for tag, points in series.items():
                for step, value in points:
                    writer.add_scalar(tag, value, step)
        finally:
            writer.close()


class RunLogger:
    def __init__(self, run_dir: Path, resume_step: int = 0):
        """On resume, drop what a crashed run logged after its last checkpoint (`resume_step`)."""
        self.path = run_dir / "metrics.jsonl"
        if self.path.exists():
            keep = [line for line in self.path.read_text().splitlines() if line and _step(line) <= resume_step]
            self.path.write_text("".join(line + "\n" for line in keep))
        self.writer = SummaryWriter(str(run_dir), purge_step=resume_step + 1 if resume_step else None)
        self.writer.add_custom_scalars(headline_layout())
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
