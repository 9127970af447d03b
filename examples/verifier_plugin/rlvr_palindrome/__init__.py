"""An rlvr verifier plugin. After `pip install .`, rows with `"verifier": "palindrome"` use it."""

import re

from rlvr.verifiers import VerifierResult


def palindrome(completion: str, ground_truth, **meta) -> VerifierResult:
    """Ground truth: {"min_letters": N}. Score 1 when the letters of the completion, lower-cased,
    read the same both ways and there are at least N of them."""
    min_letters = int(ground_truth.get("min_letters", 1)) if isinstance(ground_truth, dict) else 1
    letters = re.sub(r"[^a-z]", "", completion.lower())
    if len(letters) < min_letters:
        return VerifierResult(0.0, {"status": "wrong", "reason": f"{len(letters)} letters, fewer than {min_letters}"})
    ok = letters == letters[::-1]
    return VerifierResult(1.0 if ok else 0.0, {"status": "ok" if ok else "wrong"})
