"""Scoring in a pool of worker processes whose parent enforces a wall-clock limit per call.

Model output is untrusted: a check may hang (sympy on `10^{10^{10}}`), eat memory or crash
the interpreter. Each call runs in a worker process; the parent waits at most `timeout_s`
for it, then kills that worker, scores the row 0 with status `timeout`, and starts a new
worker. A worker that dies mid-call gives status `error`. Time limits are never enforced
by `signal.alarm` in a thread (that silently zeroed correct answers elsewhere).

Results come back in input order, so scoring a batch is deterministic whatever the timing.
A verifier may have a `fast` path (pure Python, linear in its input, no sympy: `math`'s exact
stages, `gsm8k`): rows it decides are answered in this process before any worker is asked, and
only the rest (and completions over 20,000 characters) go to the workers.
Each worker is a fresh `python -m rlvr.verifiers.pool` that caps its own address space
(`max_memory_mb`); a replacement takes about a second to import the verifiers, and the
clock of a call starts only when a ready worker receives it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import deque
from multiprocessing.connection import Connection, wait
from typing import Any, Sequence

from rlvr.verifiers.base import VerifierResult
from rlvr.verifiers._worker import READY
from rlvr.verifiers.scoring import MAX_COMPLETION_CHARS, ScoredBatch, collect, quick_result, score_one

class _Worker:
    def __init__(self, verifier_files: tuple[str, ...], max_memory_mb: int):
        env = {**os.environ, "RLVR_VERIFIER_MAX_MEMORY_MB": str(max_memory_mb)}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from rlvr.verifiers._worker import worker_main; worker_main()", *verifier_files],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        self.send_conn = Connection(os.dup(self.proc.stdin.fileno()))
        self.conn = Connection(os.dup(self.proc.stdout.fileno()))
        self.proc.stdin.close()
        self.proc.stdout.close()
        self.ready = False
        self.task: int | None = None
        self.deadline = 0.0

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)
        self.conn.close()
        self.send_conn.close()


class VerifierPool:
    """`score(completions, rows)` with a per-call time limit. `workers=0` scores in this process
    (no time limit: for debugging and for verifiers defined where a worker cannot import them)."""

    def __init__(
        self,
        workers: int = 2,
        timeout_s: float = 5.0,
        verifier_files: Sequence[str] = (),
        max_memory_mb: int = 4096,
        start_timeout_s: float = 120.0,
    ):
        self.workers, self.timeout_s, self.start_timeout_s = workers, timeout_s, start_timeout_s
        self.verifier_files = tuple(str(p) for p in verifier_files)
        self.max_memory_mb = max_memory_mb
        self.restarts = 0
        self._pool = [_Worker(self.verifier_files, max_memory_mb) for _ in range(workers)]

    def score(self, completions: Sequence[str], rows: Sequence[dict], meta: Sequence[dict] | None = None) -> ScoredBatch:
        if len(completions) != len(rows):
            raise ValueError(f"{len(completions)} completions for {len(rows)} rows")
        metas = meta if meta is not None else [{}] * len(rows)
        if self.workers == 0:
            results = [score_one(c, r["ground_truth"], r["verifier"], **m) for c, r, m in zip(completions, rows, metas)]
            return collect(results, [r["verifier"] for r in rows])

        results: list[VerifierResult | None] = [None] * len(rows)
        pending: deque[int] = deque()
        for i, (c, row) in enumerate(zip(completions, rows)):
            if len(c) > MAX_COMPLETION_CHARS:  # not worth sending to a worker
                results[i] = VerifierResult.fail("unparsable", f"completion longer than {MAX_COMPLETION_CHARS} characters")
            elif (quick := quick_result(c, row["ground_truth"], row["verifier"], **metas[i])) is not None:
                results[i] = quick  # decided here without sympy: no worker round trip
            else:
                pending.append(i)
        busy: dict[Connection, _Worker] = {}
        while pending or busy:
            for w in self._pool:
                if w.ready and w.task is None and pending:
                    i = pending.popleft()
                    row = rows[i]
                    w.task, w.deadline = i, time.monotonic() + self.timeout_s
                    w.send_conn.send((i, completions[i], row["ground_truth"], row["verifier"], metas[i]))
                    busy[w.conn] = w
            starting = {w.conn: w for w in self._pool if not w.ready}
            deadlines = [w.deadline for w in busy.values()]
            timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else self.start_timeout_s
            ready = wait([*busy, *starting], timeout=timeout)
            if not ready and not busy:
                raise RuntimeError(f"no verifier worker started within {self.start_timeout_s:g} s")
            for conn in ready:
                if conn in starting:
                    self._on_start(starting[conn])
                    continue
                w = busy.pop(conn)
                try:
                    idx, score, info = conn.recv()
                    results[idx] = VerifierResult(score, info)
                    w.task = None
                except (EOFError, OSError):
                    try:
                        code = w.proc.wait(timeout=5)  # the pipe closes a moment before the exit status is known
                    except subprocess.TimeoutExpired:
                        code = None
                    results[w.task] = VerifierResult.fail("error", f"verifier worker died (exit code {code})")
                    self._replace(w)
            now = time.monotonic()
            for conn, w in list(busy.items()):
                if now >= w.deadline:
                    del busy[conn]
                    results[w.task] = VerifierResult.fail("timeout", f"no result within {self.timeout_s:g} s")
                    self._replace(w)
        return collect(results, [r["verifier"] for r in rows])

    def _on_start(self, w: _Worker) -> None:
        try:
            msg = w.conn.recv()
        except (EOFError, OSError):
            raise RuntimeError(
                f"a verifier worker failed to start (exit code {w.proc.wait()}); see the error above "
                f"(verifier files: {', '.join(self.verifier_files) or 'none'})"
            ) from None
        if msg != READY:
            raise RuntimeError(f"unexpected message from a starting verifier worker: {msg!r}")
        w.ready = True

    def _replace(self, w: _Worker) -> None:
        w.kill()
        self._pool[self._pool.index(w)] = _Worker(self.verifier_files, self.max_memory_mb)
        self.restarts += 1

    def close(self) -> None:
        for w in self._pool:
            if w.ready:  # a worker still starting up is killed, not waited for
                try:
                    w.send_conn.send(None)
                except OSError:
                    pass
        for w in self._pool:
            if w.ready:
                try:
                    w.proc.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    pass
            w.kill()
        self._pool = []

    def __enter__(self) -> "VerifierPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
