"""Upstream stages of the recipe: pretrain, sft, dpo (and the recipe that chains them with RLVR)."""
