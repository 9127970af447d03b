"""Critic-free baselines against hand-computed values, and the identities between them."""

import pytest
import torch

from rlvr.baselines.group import GROUP_ADVANTAGES

R = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.5])  # two groups of four
G = torch.tensor([0, 0, 0, 0, 7, 7, 7, 7])
M = torch.ones(8, 3)


def first(adv):
    return adv[:, 0].tolist()


def test_by_hand():
    # group 0: rewards 1, 0, 0, 1: mean 0.5, unbiased std sqrt(4 * 0.25 / 3) = 0.577350
    # group 7: rewards 1, 1, 0, 0.5: mean 0.625, deviations .375 .375 -.625 -.125, std sqrt(0.6875 / 3) = 0.478714
    assert first(GROUP_ADVANTAGES["dr_grpo"](R, G, M)) == pytest.approx([0.5, -0.5, -0.5, 0.5, 0.375, 0.375, -0.625, -0.125])
    assert first(GROUP_ADVANTAGES["grpo"](R, G, M, eps=0.0)) == pytest.approx(
        [0.866025, -0.866025, -0.866025, 0.866025, 0.783349, 0.783349, -1.305582, -0.261116], abs=1e-5
    )
    # RLOO, first sample of group 0: 1 - mean(0, 0, 1) = 2/3
    assert first(GROUP_ADVANTAGES["rloo"](R, G, M))[0] == pytest.approx(2 / 3)
    assert first(GROUP_ADVANTAGES["none"](R, G, M)) == pytest.approx(R.tolist())


def test_identities():
    centred = GROUP_ADVANTAGES["dr_grpo"](R, G, M)
    # RLOO = k / (k - 1) * the mean-centred reward (k = 4)
    assert GROUP_ADVANTAGES["rloo"](R, G, M) == pytest.approx(centred * 4 / 3)
    # GRPO and Dr. GRPO differ exactly by the per-group std
    std = torch.tensor([0.577350] * 4 + [0.478714] * 4)[:, None]
    assert GROUP_ADVANTAGES["grpo"](R, G, M, eps=0.0) == pytest.approx(centred / std, abs=1e-5)


def test_padding_and_constant_groups():
    mask = torch.tensor([[1.0, 1.0, 0.0]] * 8)
    adv = GROUP_ADVANTAGES["grpo"](R, G, mask)
    assert adv[:, 2].abs().sum() == 0  # padding gets nothing
    same = torch.ones(4)
    assert GROUP_ADVANTAGES["grpo"](same, torch.zeros(4), torch.ones(4, 2)).abs().max() == 0  # zero variance: zero advantage
