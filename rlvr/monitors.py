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

from collections import deque
from dataclasses import dataclass, field

from rlvr.config import MonitorConfig, VerifyConfig


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


class VerifierFailure(RuntimeError):
    """A verifier fails too often for its rewards to mean anything."""


class VerifierHealth:
    """Stops a run whose verifier is broken: over the last `verify.rate_window_steps` steps, one
    verifier's `error` (or `timeout`) rate above `verify.max_error_rate` (`max_timeout_rate`). A
    broken plugin or a misconfigured ground truth would otherwise give zero rewards that the run
    goes on learning from."""

    def __init__(self, cfg: VerifyConfig):
        self.cfg = cfg
        self.window: deque[dict[str, list]] = deque(maxlen=max(1, cfg.rate_window_steps))

    def check(self, scored, step: int) -> None:
        now: dict[str, list] = {}  # verifier -> [results, errors, timeouts, reasons]
        for name, r in zip(scored.verifier_names, scored.results):
            entry = now.setdefault(name, [0, 0, 0, []])
            entry[0] += 1
            for k, status in ((1, "error"), (2, "timeout")):
                if r.status == status:
                    entry[k] += 1
                    reason = str(r.info.get("reason", ""))[:160]
                    if reason and reason not in entry[3] and len(entry[3]) < 3:
                        entry[3].append(reason)
        self.window.append(now)
        if len(self.window) < self.window.maxlen:
            return
        for name in now:
            n = sum(s[name][0] for s in self.window if name in s)
            for k, status, limit in ((1, "error", self.cfg.max_error_rate), (2, "timeout", self.cfg.max_timeout_rate)):
                rate = sum(s[name][k] for s in self.window if name in s) / max(n, 1)
                if limit < 1.0 and rate > limit:
                    reasons = [r for s in self.window if name in s for r in s[name][3]][:3]
                    raise VerifierFailure(
                        f"step {step}: verifier {name!r} gave `{status}` for {rate:.0%} of its {n} results over the last "
                        f"{len(self.window)} steps (verify.max_{status}_rate={limit}); the run stops. Reasons: {reasons}"
                    )
