"""Built-in verifiers. Each is a plain function: completion + ground truth in, VerifierResult out."""

from __future__ import annotations

import json
import re
from typing import Any

from rlvr.verifiers.base import VerifierResult
from rlvr.verifiers.registry import register_verifier


def _as_object(ground_truth: Any) -> dict:
    if isinstance(ground_truth, str):
        ground_truth = json.loads(ground_truth)
    if not isinstance(ground_truth, dict):
        raise ValueError(f"ground truth must be a JSON object, got {type(ground_truth).__name__}")
    return ground_truth


@register_verifier("allowed_words")
def allowed_words(completion: str, ground_truth: Any, **meta) -> VerifierResult:
    """Every whitespace-separated word of the completion must come from `allowed`.

    Ground truth: `{"allowed": ["0", "1", ...], "min_words": 1}`. Score: the fraction of
    words that are allowed (a dense signal a policy can climb), 0 when there are fewer than
    `min_words` words. Status `ok` only when every word is allowed.
    """
    gt = _as_object(ground_truth)
    allowed = set(gt["allowed"])
    min_words = int(gt.get("min_words", 1))
    words = completion.split()
    if len(words) < min_words:
        return VerifierResult.fail("wrong", f"{len(words)} words, fewer than {min_words}")
    bad = [w for w in words if w not in allowed]
    score = 1.0 - len(bad) / len(words)
    return VerifierResult(score, {"status": "ok" if not bad else "wrong", "bad_words": bad[:10]})


@register_verifier("regex")
def regex(completion: str, ground_truth: Any, **meta) -> VerifierResult:
    """The stripped completion must fully match the ground-truth regular expression."""
    pattern = ground_truth if isinstance(ground_truth, str) else _as_object(ground_truth)["pattern"]
    ok = re.fullmatch(pattern, completion.strip()) is not None
    return VerifierResult(1.0 if ok else 0.0, {"status": "ok" if ok else "wrong"})
