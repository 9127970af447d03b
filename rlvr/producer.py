"""Where each step's scored rollouts come from: now, or ahead of the learner within a staleness bound.

With `max_staleness` 0 a step's rollouts are made when the learner asks for them, from the
weights of the update just before (generate, verify, then learn: a synchronous loop). With
`max_staleness` k > 0 a background thread makes step t's rollouts as soon as the engines hold
weights of version t - 1 - k or newer (version v: the weights after step v's update), so
generation and verification of the next steps overlap the learner's update; every rollout
records its version and no step trains on rollouts more than k updates old.

What the producer consumed of the prompt order is checkpointed as it stood before the first
step not yet trained (`sampler_state`): a resumed run regenerates the rollouts that were in
flight, from the checkpoint's weights.
"""

from __future__ import annotations

import threading
from typing import Callable


class RolloutProducer:
    def __init__(self, collect: Callable[[int], object], steps: range, max_staleness: int, sampler, published: int):
        """`collect(step)` makes one step's rollouts; `published` is the engines' weights version now."""
        self.collect, self.steps, self.k, self.sampler = collect, steps, max_staleness, sampler
        self.published = published
        self.cond = threading.Condition()
        self.ready: dict[int, object] = {}
        self.sampler_states: dict[int, dict] = {}
        self.take_lock = threading.Lock()
        self.stopped = False
        self.thread = None
        if self.k > 0 and len(steps):
            self.thread = threading.Thread(target=self._run, name="rollout-producer", daemon=True)
            self.thread.start()

    def get(self, step: int):
        """Step `step`'s rollouts (waits for them in asynchronous mode); a producer error is raised here."""
        with self.take_lock:  # positions before steps already trained are not needed again
            self.sampler_states = {s: v for s, v in self.sampler_states.items() if s >= step}
        if self.thread is None:
            return self._collect(step)
        with self.cond:
            self.cond.wait_for(lambda: step in self.ready)
            out = self.ready.pop(step)
        if isinstance(out, BaseException):
            raise out
        return out

    def publish(self, version: int) -> None:
        """The engines now hold the weights of `version` (pushed and acknowledged)."""
        with self.cond:
            self.published = version
            self.cond.notify_all()

    def sampler_state(self, next_step: int) -> dict:
        """The prompt order's position before step `next_step` took its prompts."""
        with self.take_lock:
            return self.sampler_states.get(next_step) or self.sampler.state_dict()

    def stop(self) -> None:
        """No more steps are started; a step being made finishes, or fails once the engines are closed."""
        with self.cond:
            self.stopped = True
            self.cond.notify_all()

    def join(self, timeout: float = 30.0) -> None:
        if self.thread is not None:
            self.thread.join(timeout)

    def _collect(self, step: int):
        with self.take_lock:
            self.sampler_states[step] = self.sampler.state_dict()
        return self.collect(step)

    def _run(self) -> None:
        for step in self.steps:
            with self.cond:
                self.cond.wait_for(lambda: self.stopped or self.published >= step - 1 - self.k)
                if self.stopped:
                    return
            try:
                out = self._collect(step)
            except BaseException as e:  # handed to the learner's thread, which raises it
                out = e
            with self.cond:
                self.ready[step] = out
                self.cond.notify_all()
            if isinstance(out, BaseException):
                return
