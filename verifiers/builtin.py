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


@register_verifier("exact")
def exact(completion: str, ground_truth: Any, **meta) -> VerifierResult:
    """The stripped completion equals the stripped ground truth."""
    ok = completion.strip() == str(ground_truth).strip()
    return VerifierResult(1.0 if ok else 0.0, {"status": "ok" if ok else "wrong"})


FORMAT_KEYS = {"required_tags", "min_chars", "max_chars", "min_words", "max_words", "regex"}


def _format_spec(ground_truth: Any) -> dict:
    spec = _as_object(ground_truth)
    unknown = sorted(set(spec) - FORMAT_KEYS)
    if unknown:
        raise ValueError(f"format: unknown key {unknown[0]!r} (known: {', '.join(sorted(FORMAT_KEYS))})")
    if not spec:
        raise ValueError("format: no constraint given")
    for key in ("min_chars", "max_chars", "min_words", "max_words"):
        if key in spec and (not isinstance(spec[key], int) or isinstance(spec[key], bool) or spec[key] < 0):
            raise ValueError(f"format: {key} must be a non-negative integer, got {spec[key]!r}")
    if "required_tags" in spec and not (
        isinstance(spec["required_tags"], list) and all(isinstance(t, str) and re.fullmatch(r"[\w-]+", t) for t in spec["required_tags"])
    ):
        raise ValueError("format: required_tags must be a list of tag names")
    if "regex" in spec:
        re.compile(spec["regex"])
    return spec


@register_verifier("format")
def format_verifier(completion: str, ground_truth: Any, **meta) -> VerifierResult:
    """Format constraints, scored as the fraction met. Ground truth: any of
    `{"required_tags": ["think", "answer"], "min_chars": 1, "max_chars": 2000, "min_words": 1,
    "max_words": 300, "regex": "..."}`; a tag is met by one `<tag>...</tag>` pair, in that order."""
    spec = _format_spec(ground_truth)
    checks: list[tuple[str, bool]] = []
    pos = 0
    for tag in spec.get("required_tags", []):
        m = re.compile(rf"<{tag}>(.*?)</{tag}>", re.DOTALL).search(completion, pos)
        checks.append((f"tag:{tag}", m is not None))
        pos = m.end() if m else pos
    n_chars, n_words = len(completion.strip()), len(completion.split())
    for key, ok in (
        ("min_chars", n_chars >= spec.get("min_chars", 0)),
        ("max_chars", n_chars <= spec.get("max_chars", n_chars)),
        ("min_words", n_words >= spec.get("min_words", 0)),
        ("max_words", n_words <= spec.get("max_words", n_words)),
    ):
        if key in spec:
            checks.append((key, ok))
    if "regex" in spec:
        checks.append(("regex", re.search(spec["regex"], completion, flags=re.DOTALL) is not None))
    score = sum(ok for _, ok in checks) / len(checks)
    return VerifierResult(score, {"status": "ok" if score == 1.0 else "wrong", "checks": checks})


format_verifier.validate = _format_spec  # type: ignore[attr-defined]

# worst first: the combined status is the worst of its parts
_STATUS_ORDER = ("error", "timeout", "unparsable", "wrong", "ok")


def _combine_parts(ground_truth: Any) -> list[dict]:
    from rlvr.verifiers.registry import get_verifier

    spec = _as_object(ground_truth)
    parts = spec.get("verifiers")
    if not isinstance(parts, list) or not parts:
        raise ValueError("combine: ground truth needs a non-empty 'verifiers' list")
    for i, part in enumerate(parts):
        if not isinstance(part, dict) or "name" not in part or "ground_truth" not in part:
            raise ValueError(f"combine: part {i} needs 'name' and 'ground_truth'")
        if part["name"] == "combine":
            raise ValueError("combine: parts cannot be 'combine'")
        w = part.get("weight", 1.0)
        if not isinstance(w, (int, float)) or isinstance(w, bool) or w < 0:
            raise ValueError(f"combine: part {i} weight must be a non-negative number, got {w!r}")
        fn = get_verifier(part["name"])
        if hasattr(fn, "validate"):
            fn.validate(part["ground_truth"])
    if sum(p.get("weight", 1.0) for p in parts) <= 0:
        raise ValueError("combine: the weights sum to 0")
    return parts


@register_verifier("combine")
def combine(completion: str, ground_truth: Any, **meta) -> VerifierResult:
    """A weighted mean of other verifiers. Ground truth:
    `{"verifiers": [{"name": "math", "ground_truth": "42", "weight": 0.9},
                    {"name": "format", "ground_truth": {"required_tags": ["answer"]}, "weight": 0.1}]}`.
    A part that raises scores 0 with status `error`; the combined status is the worst part's."""
    from rlvr.verifiers.scoring import score_one

    parts = _combine_parts(ground_truth)
    total = sum(p.get("weight", 1.0) for p in parts)
    results = [score_one(completion, p["ground_truth"], p["name"], **meta) for p in parts]
    score = sum(p.get("weight", 1.0) * r.score for p, r in zip(parts, results)) / total
    status = min((r.status for r in results), key=_STATUS_ORDER.index)
    return VerifierResult(
        min(1.0, score), {"status": status, "parts": [[p["name"], r.score, r.status] for p, r in zip(parts, results)]}
    )


combine.validate = _combine_parts  # type: ignore[attr-defined]
