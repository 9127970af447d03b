"""A verifier worker process, started by VerifierPool with the verifier files as arguments."""

import os
import sys
from multiprocessing.connection import Connection

READY = "ready"


def worker_main() -> None:
    """Score tasks from stdin, answer on stdout, until stdin closes.

    A plain subprocess rather than multiprocessing's spawn or fork server: those re-import the
    parent's `__main__` (a user's script without a main guard would start workers recursively),
    and a fork of the trainer would copy its threads' locks.
    """
    recv_conn, send_conn = Connection(os.dup(0)), Connection(os.dup(1))
    os.dup2(2, 1)  # whatever a verifier prints goes to stderr, never into the answer channel
    sys.stdout = sys.stderr
    max_memory_mb = int(os.environ.get("RLVR_VERIFIER_MAX_MEMORY_MB", "0"))
    if max_memory_mb > 0:
        import resource

        limit = max_memory_mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import rlvr.verifiers  # noqa: F401  (registers the built-ins)
    from rlvr.verifiers.registry import load_verifier_file
    from rlvr.verifiers.scoring import score_one

    for path in sys.argv[1:]:  # (with -c, argv[0] is "-c")
        load_verifier_file(path)
    from rlvr.verifiers.registry import available_verifiers, get_verifier

    for name in available_verifiers():  # heavy imports (sympy) now, not in the first call's time limit
        warm = getattr(get_verifier(name), "warm", None)
        if warm is not None:
            warm()
    send_conn.send(READY)
    while True:
        try:
            task = recv_conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        idx, completion, ground_truth, verifier, meta = task
        result = score_one(completion, ground_truth, verifier, **meta)
        send_conn.send((idx, result.score, plain(result.info)))


def plain(value, depth: int = 0):
    """`value` as built-in types only (what a plugin put in `info` may be an object of its own module,
    which the parent could not unpickle): other objects become their repr."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if depth > 8:
        return repr(value)[:200]
    if isinstance(value, dict):
        return {str(k): plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v, depth + 1) for v in value]
    return repr(value)[:200]

