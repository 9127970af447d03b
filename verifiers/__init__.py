"""Verifiers: the reward of RLVR.

A verifier is a callable `(completion: str, ground_truth, **meta) -> VerifierResult`.
Built-ins register with `@register_verifier("name")`; third-party packages through the
entry-point group `rlvr.verifiers`; local experiments through a file path in the config
(`verifier_files`).
"""

from rlvr.verifiers.base import STATUSES, VerifierResult
from rlvr.verifiers.registry import (
    UnknownVerifierError,
    available_verifiers,
    canonical_name,
    get_verifier,
    load_verifier_file,
    register_verifier,
)
from rlvr.verifiers.scoring import ScoredBatch, score_batch
from rlvr.verifiers.pool import VerifierPool

# Importing the built-ins registers them.
from rlvr.verifiers import builtin, ifeval, math_answers  # noqa: E402,F401  isort: skip

__all__ = [
    "STATUSES",
    "ScoredBatch",
    "UnknownVerifierError",
    "VerifierPool",
    "VerifierResult",
    "available_verifiers",
    "canonical_name",
    "get_verifier",
    "load_verifier_file",
    "register_verifier",
    "score_batch",
]
