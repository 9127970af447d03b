"""Scoring in a pool of worker processes whose parent enforces a wall-clock limit per call.

Model output is untrusted: a check may hang (sympy on `10^{10^{10}}`), eat memory or crash
the interpreter. Each call runs in a worker process; the parent waits at most `timeout_s`
for it, then kills that worker, scores the row 0 with status `timeout`, and starts a new
worker. A worker that dies mid-call gives status `error`. Time limits are never enforced
by `signal.alarm` in a thread (that silently zeroed correct answers elsewhere).

Results come back in input order, so scoring a batch is deterministic whatever the timing.
The pool never raises for one row: a worker found dead when a row is sent to it (killed while
idle) is replaced and the row goes to another (after 3 such tries the row is an `error`); a worker
that dies mid-call, a result the parent cannot read (an object of a plugin's module) or a
malformed one makes that row an `error` with the reason; a replacement that fails to start is
retried, and once every worker has failed to start `start_retries` times in a row, the rows left
are `error`s naming the cause. Only the very first start failing is an exception: then no worker
can import the verifiers, a configuration error. `restarts` and `start_failures` count it all.
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


def _result_of(msg: Any, task: int) -> VerifierResult | None:
    """A worker's (row, score, info) as a VerifierResult, or None when it is not one for `task`."""
    if not (isinstance(msg, tuple) and len(msg) == 3 and msg[0] == task):
        return None
    _, score, info = msg
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not isinstance(info, dict):
        return None
    try:
        return VerifierResult(float(score), info)
    except Exception:
        return None


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
        start_retries: int = 3,
    ):
        self.workers, self.timeout_s, self.start_timeout_s = workers, timeout_s, start_timeout_s
        self.start_retries = start_retries  # per worker slot, in a row, before the pool gives up on starting any
        self.last_start_error = ""
        self.verifier_files = tuple(str(p) for p in verifier_files)
        self.max_memory_mb = max_memory_mb
        self.restarts = 0  # workers replaced (timeouts, deaths, bad results)
        self.start_failures = 0  # replacement workers that failed to start
        self.ever_ready = False
        self._failed_starts_in_a_row = 0
        self._pool = [_Worker(self.verifier_files, max_memory_mb) for _ in range(workers)]

    def score(self, completions: Sequence[str], rows: Sequence[dict], meta: Sequence[dict] | None = None) -> ScoredBatch:
        if len(completions) != len(rows):
            raise ValueError(f"{len(completions)} completions for {len(rows)} rows")
        metas = meta if meta is not None else [{}] * len(rows)
        if self.workers == 0:
            results = [score_one(c, r["ground_truth"], r["verifier"], **m) for c, r, m in zip(completions, rows, metas)]
            return collect(results, [r["verifier"] for r in rows])

        if len(self._pool) < self.workers:  # the pool gave up on starting workers before: try again
            self._pool += [_Worker(self.verifier_files, self.max_memory_mb) for _ in range(self.workers - len(self._pool))]
            self._failed_starts_in_a_row = 0
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
        sends: dict[int, int] = {}  # row -> tries that found the worker already dead
        while pending or busy:
            for w in list(self._pool):
                if w.ready and w.task is None and pending:
                    i = pending.popleft()
                    row = rows[i]
                    try:
                        if w.proc.poll() is not None:
                            raise BrokenPipeError
                        w.send_conn.send((i, completions[i], row["ground_truth"], row["verifier"], metas[i]))
                    except (OSError, ValueError):  # died while idle: the row never started; a fresh worker takes it
                        self._replace(w)
                        sends[i] = sends.get(i, 0) + 1
                        if sends[i] < 3:
                            pending.appendleft(i)
                        else:
                            results[i] = VerifierResult.fail("error", "verifier workers died before they could take this row (3 tries)")
                        continue
                    w.task, w.deadline = i, time.monotonic() + self.timeout_s
                    busy[w.conn] = w
            if self._failed_starts_in_a_row >= self.start_retries * max(self.workers, 1):
                for i in pending:
                    results[i] = VerifierResult.fail("error", f"no verifier worker could start: {self.last_start_error}")
                pending.clear()
                if not busy:
                    break
            starting = {w.conn: w for w in self._pool if not w.ready}
            deadlines = [w.deadline for w in busy.values()]
            timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else self.start_timeout_s
            ready = wait([*busy, *starting], timeout=timeout)
            if not ready and not busy:
                if not self.ever_ready:
                    raise RuntimeError(f"no verifier worker started within {self.start_timeout_s:g} s")
                self.last_start_error = f"none started within {self.start_timeout_s:g} s"
                self._failed_starts_in_a_row = self.start_retries * max(self.workers, 1)
                continue
            for conn in ready:
                if conn in starting:
                    self._on_start(starting[conn])
                    continue
                w = busy.pop(conn)
                try:
                    msg = conn.recv()
                except (EOFError, OSError):
                    try:
                        code = w.proc.wait(timeout=5)  # the pipe closes a moment before the exit status is known
                    except subprocess.TimeoutExpired:
                        code = None
                    results[w.task] = VerifierResult.fail("error", f"verifier worker died (exit code {code})")
                    self._replace(w)
                    continue
                except Exception as e:  # a whole message that cannot be unpickled here: the worker is fine
                    results[w.task] = VerifierResult.fail("error", f"the verifier's result could not be read: {type(e).__name__}: {e}"[:500])
                    w.task = None
                    continue
                result = _result_of(msg, w.task)
                if result is None:
                    results[w.task] = VerifierResult.fail("error", f"malformed result from the verifier worker: {msg!r}"[:500])
                    self._replace(w)
                else:
                    results[w.task] = result
                    w.task = None
            now = time.monotonic()
            for conn, w in list(busy.items()):
                if now >= w.deadline:
                    del busy[conn]
                    results[w.task] = VerifierResult.fail("timeout", f"no result within {self.timeout_s:g} s")
                    self._replace(w)
        return collect(results, [r["verifier"] for r in rows])

    def _on_start(self, w: _Worker) -> None:
        """A starting worker spoke: it is ready, or it failed (an exception only if none ever started)."""
        try:
            msg = w.conn.recv()
        except (EOFError, OSError):
            msg = None
        if msg == READY:
            w.ready, self.ever_ready, self._failed_starts_in_a_row = True, True, 0
            return
        code = w.proc.poll()
        reason = f"exit code {code}" if msg is None else f"unexpected message {msg!r}"[:200]
        if not self.ever_ready and not (code is not None and code < 0):  # (a signal, e.g. the OOM killer, is not the files' fault)
            raise RuntimeError(
                f"a verifier worker failed to start ({reason}); see the error above "
                f"(verifier files: {', '.join(self.verifier_files) or 'none'})"
            )
        self.start_failures += 1
        self._failed_starts_in_a_row += 1
        self.last_start_error = f"a worker failed to start ({reason})"
        if self._failed_starts_in_a_row < self.start_retries * max(self.workers, 1):
            self._replace(w, count=False)
        else:
            w.kill()
            self._pool.remove(w)

    def _replace(self, w: _Worker, count: bool = True) -> None:
        w.kill()
        self._pool[self._pool.index(w)] = _Worker(self.verifier_files, self.max_memory_mb)
        self.restarts += count

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
