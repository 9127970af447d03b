from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol

# ok: followed/correct; wrong: checked and failed; unparsable: no answer could be read;
# timeout: the check ran past its limit; error: the verifier raised or its ground truth is bad.
STATUSES = ("ok", "wrong", "unparsable", "timeout", "error")


@dataclass(frozen=True)
class VerifierResult:
    """What a verifier says of one completion: `score` in [0, 1] and `info["status"]`."""

    score: float
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.score, (int, float)) or math.isnan(self.score) or not 0.0 <= self.score <= 1.0:
            raise ValueError(f"VerifierResult.score must be a number in [0, 1], got {self.score!r}")
        status = self.info.get("status")
        if status is None:
            self.info["status"] = "ok" if self.score >= 1.0 else "wrong"
        elif status not in STATUSES:
            raise ValueError(f"VerifierResult.info['status'] must be one of {STATUSES}, got {status!r}")

    @property
    def status(self) -> str:
        return self.info["status"]

    @classmethod
    def fail(cls, status: str, reason: str, **info) -> "VerifierResult":
        return cls(0.0, {"status": status, "reason": reason, **info})


class Verifier(Protocol):
    def __call__(self, completion: str, ground_truth: Any, **meta: Any) -> VerifierResult: ...
