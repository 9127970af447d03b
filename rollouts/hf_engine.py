"""transformers `generate` as the rollout engine: the fallback with the same interface."""

from __future__ import annotations

from typing import Iterable

import torch

from rlvr.rollouts.base import Rollout, Sampling, derive_seed


class HFEngine:
    def __init__(self, model_path: str, dtype: str = "float32", batch_size: int = 64, **_ignored):
        from transformers import GenerationConfig

        from rlvr.chat import stop_token_ids
        from rlvr.models import learner_device, load_policy, load_tokenizer

        self.device = learner_device()  # the GPU when there is one
        self.model = load_policy(model_path, dtype).to(self.device).eval()
        self.tokenizer = load_tokenizer(model_path)
        self.batch_size = batch_size
        self.eos_ids = set(stop_token_ids(model_path, self.tokenizer))
        # The checkpoint's sampling defaults (Qwen2.5-Instruct ships temperature 0.7, top_p 0.8,
        # top_k 20, repetition_penalty 1.05) would fill whatever generate() is not told: only the
        # run's own settings may shape the distribution the learner reproduces.
        self.model.generation_config = GenerationConfig(
            bos_token_id=self.tokenizer.bos_token_id, eos_token_id=sorted(self.eos_ids), pad_token_id=self.tokenizer.pad_token_id
        )

    @torch.no_grad()
    def generate(self, prompt_token_ids: list[list[int]], sampling: Sampling, n: int = 1) -> list[Rollout]:
        pad = self.tokenizer.pad_token_id
        greedy = sampling.temperature == 0
        rollouts: list[Rollout] = []
        with torch.random.fork_rng():
            # one generator for the whole call; a slice of a step's prompts (an engine actor's share) seeds by its position
            seed = derive_seed(sampling.seed, sampling.first_index) if sampling.first_index else sampling.seed
            torch.manual_seed(seed % (2**63))
            for start in range(0, len(prompt_token_ids), self.batch_size):
                chunk = prompt_token_ids[start : start + self.batch_size]
                width = max(len(p) for p in chunk)
                input_ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in chunk])
                attn = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
                out = self.model.generate(
                    input_ids=input_ids.to(self.device),
                    attention_mask=attn.to(self.device),
                    max_new_tokens=sampling.max_new_tokens,
                    do_sample=not greedy,
                    temperature=None if greedy else sampling.temperature,
                    top_p=None if greedy else sampling.top_p,
                    top_k=None if greedy else 0,  # no top-k, as in vLLM (transformers' default is 50)
                    num_return_sequences=n,
                    pad_token_id=pad,
                    eos_token_id=sorted(self.eos_ids),
                    output_scores=True,
                    return_dict_in_generate=True,
                )
                # the scores sampled from (logits / temperature, top-p applied), as log-probabilities
                logp = torch.stack(out.scores, dim=1).float().log_softmax(-1).cpu()  # [B*n, T, V]
                new = out.sequences[:, width:].cpu()
                for row in range(new.shape[0]):
                    tokens, reason = [], "length"
                    for t in new[row].tolist():
                        tokens.append(t)
                        if t in self.eos_ids:
                            reason = "stop"
                            break
                    lps = [logp[row, j, t].item() for j, t in enumerate(tokens)]
                    prompt = chunk[row // n]
                    text = self.tokenizer.decode(tokens, skip_special_tokens=True)
                    rollouts.append(Rollout(list(prompt), tokens, text, lps, reason))
        return rollouts

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        state = dict(named_tensors)
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        if unexpected or [m for m in missing if m not in ("lm_head.weight",)]:
            raise RuntimeError(f"weights do not fit the engine's model: missing {missing}, unexpected {unexpected}")

    def close(self) -> None:
        self.model = None
