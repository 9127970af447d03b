from rlvr.config import MonitorConfig
from rlvr.monitors import Monitor


def test_alerts_fire_once_and_carry_over_resume():
    m = Monitor(MonitorConfig(kl_max=1.0, entropy_min=0.1, length_drift=0.5, train_heldout_gap=0.3))
    scalars, msgs = m.check({"policy/kl": 0.2, "policy/entropy": 2.0, "rollout/len_mean": 10.0, "reward/pass_rate": 0.1, "eval/heldout/sampled_pass_rate": 0.1})
    assert scalars == {"alerts/kl": 0.0, "alerts/entropy_collapse": 0.0, "alerts/length_drift": 0.0, "alerts/train_heldout_gap": 0.0}
    assert msgs == []
    # KL 1.5 > 1.0; entropy 0.05 < 0.1; length 16 is 60% over 10; training 0.9 vs held-out 0.1
    step = {"policy/kl": 1.5, "policy/entropy": 0.05, "rollout/len_mean": 16.0, "reward/pass_rate": 0.9}
    scalars, msgs = m.check(step)
    assert all(v == 1.0 for v in scalars.values())
    assert [x.split(":")[0] for x in msgs] == ["alert kl", "alert entropy_collapse", "alert length_drift", "alert train_heldout_gap"]
    restored = Monitor(m.cfg)
    restored.load_state_dict(m.state_dict())
    scalars, msgs = restored.check(step)
    assert all(v == 1.0 for v in scalars.values()) and msgs == []  # printed once per run, logged every step
    assert restored.check({**step, "rollout/len_mean": 12.0})[0]["alerts/length_drift"] == 0.0
