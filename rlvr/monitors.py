"""Instability and reward-hacking monitors for one seed.

Each step the monitor looks at the step's metrics and raises alerts when
- the KL to the reference (`policy/kl`, per token) grows past `kl_max`;
- the policy entropy (`policy/entropy`) collapses below `entropy_min`;
- the mean response length drifts from its first-step value by more than `length_drift` (a ratio);
- the training pass rate exceeds the latest held-out pass rate by more than `train_heldout_gap`
  (the policy may be exploiting the training prompts or the verifier).
Alerts go to TensorBoard as `alerts/<name>` (1 on the step it fires, 0 otherwise) and to the
console; each alert is printed once per run, the TensorBoard scalar every step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rlvr.config import MonitorConfig


@dataclass
class Monitor:
    cfg: MonitorConfig
    first_length: float | None = None
    heldout_pass: float | None = None
    announced: set[str] = field(default_factory=set)

    def check(self, m: dict[str, float]) -> tuple[dict[str, float], list[str]]:
        """(alerts/* scalars, messages for alerts firing for the first time)."""
        c = self.cfg
        if self.first_length is None and "rollout/len_mean" in m:
            self.first_length = m["rollout/len_mean"]
        if "eval/heldout/sampled_pass_rate" in m:
            self.heldout_pass = m["eval/heldout/sampled_pass_rate"]
        fired = {
            "kl": m.get("policy/kl", 0.0) > c.kl_max,
            "entropy_collapse": m.get("policy/entropy", float("inf")) < c.entropy_min,
            "length_drift": bool(self.first_length)
            and abs(m.get("rollout/len_mean", self.first_length) / self.first_length - 1.0) > c.length_drift,
            "train_heldout_gap": self.heldout_pass is not None
            and m.get("reward/pass_rate", 0.0) - self.heldout_pass > c.train_heldout_gap,
        }
        details = {
            "kl": f"KL to the reference {m.get('policy/kl', 0.0):.3f} > {c.kl_max}",
            "entropy_collapse": f"entropy {m.get('policy/entropy', 0.0):.3f} < {c.entropy_min}",
            "length_drift": f"mean response length {m.get('rollout/len_mean', 0.0):.1f} vs {self.first_length or 0.0:.1f} at the start",
            "train_heldout_gap": f"training pass rate {m.get('reward/pass_rate', 0.0):.3f} vs held-out {self.heldout_pass or 0.0:.3f}",
        }
        messages = []
        for name, on in fired.items():
            if on and name not in self.announced:
                self.announced.add(name)
                messages.append(f"alert {name}: {details[name]}")
        return {f"alerts/{k}": float(v) for k, v in fired.items()}, messages

    def state_dict(self) -> dict:
        return {"first_length": self.first_length, "heldout_pass": self.heldout_pass, "announced": sorted(self.announced)}

    def load_state_dict(self, state: dict) -> None:
        self.first_length, self.heldout_pass = state["first_length"], state["heldout_pass"]
        self.announced = set(state["announced"])
