"""Rollout engines as Ray actors: the same run as the in-process engine, deterministic with two
engines, weight pushes over both transports, an engine killed mid-run, and the staleness bound
of asynchronous generation."""

import json
import threading
import time

import pytest
import torch

from rlvr.config import load_config
from rlvr.producer import RolloutProducer
from rlvr.rollouts import Sampling, make_engine
from rlvr.rollouts.actors import EngineActors, EngineError, split_evenly, unpack, weight_buckets
from rlvr.trainer import train
from tests.numerics import LOGPROB_ATOL

GRPO = "experiments/tiny/baselines/grpo.yaml"
# time, throughput and transport-speed figures differ between any two runs; every other number must not
TIMING = ("time/", "rollout/tokens_per_s", "sync/bytes_per_s")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Every engine here computes with one thread, in this process as in the actors (which run with
    `rollout.engine_cpus` 1): two thread counts may split float reductions differently, and these
    tests compare engines and runs exactly (the project's rule: exact only at the same thread count,
    on one machine)."""
    before = torch.get_num_threads()
    torch._C.set_num_threads(1)  # (vLLM replaces torch.set_num_threads with a no-op once it has started)
    yield
    torch._C.set_num_threads(before)


@pytest.fixture(scope="module")
def ray_cluster():
    import gc

    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
    # the in-process vLLM engines of these runs are gone before the session's shared engine starts
    # (finalising one tears down vLLM's process-global state, which a live engine needs)
    gc.collect()


@pytest.fixture(scope="module")
def local_engine(tiny_model_dir):
    """This module's own in-process engine: vLLM's shared state does not survive engines that come and
    go beside a live one, so these tests do not use the session's engine."""
    engine = make_engine("vllm", str(tiny_model_dir), max_model_len=512, kv_cache_mb=64)
    yield engine
    engine.close()


def _run(tmp_path, name, *overrides, steps=4, resume=False):
    cfg = load_config(
        GRPO,
        ["--output_dir", str(tmp_path), "--name", name, "--train.steps", str(steps), "--train.eval_every", "2",
         "--train.checkpoint_every", "2", "--data.num_eval", "16", *overrides],
    )
    train(cfg, resume=resume, progress=False)
    return cfg, [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]


def _without_timing(rows):
    return [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in rows]


def test_split_and_buckets():
    assert split_evenly(7, 3) == [slice(0, 3), slice(3, 5), slice(5, 7)]
    assert split_evenly(2, 4) == [slice(0, 1), slice(1, 2)]  # engines without prompts get no call
    named = [("a", torch.randn(3, 4)), ("b", torch.randn(5).bfloat16()), ("c", torch.arange(7)), ("d", torch.randn(2, 2).half())]
    buckets = list(weight_buckets(iter(named), bucket_bytes=60))
    # a (48 B) + b (10 B) reach 58 < 60; c starts aligned at 64 and closes the first bucket at 120; d alone
    assert len(buckets) == 2 and [row[3] for row in buckets[0][0]] == [0, 48, 64] and buckets[0][1].numel() == 120
    back = [t for layout, flat in buckets for t in unpack(layout, flat.clone())]
    assert [n for n, _ in back] == [n for n, _ in named]
    for (_, x), (_, y) in zip(named, back):
        assert x.dtype == y.dtype and torch.equal(x, y)


def test_producer_keeps_the_staleness_bound():
    """The producer makes step t only once version t - 1 - k is published, runs ahead by at most k
    steps, records the prompt position before each step, and hands its errors to the learner."""

    class Sampler:
        position = 0

        def state_dict(self):
            return {"position": self.position}

    sampler, seen = Sampler(), []
    started = threading.Event()

    def collect(step):
        started.wait()
        seen.append((step, producer.published))
        sampler.position += 10
        if step == 5:
            raise RuntimeError("engine 0 died")
        return step

    producer = RolloutProducer(collect, range(1, 7), 2, sampler, published=0)
    started.set()
    for step in range(1, 5):
        assert producer.get(step) == step
        time.sleep(0.05)  # the producer gets every chance to run further ahead than it may
        assert max(s for s, _ in seen) <= step + 2
        if step == 2:
            assert producer.sampler_state(3) == {"position": 20}  # before step 3 took its prompts
        producer.publish(step)
    with pytest.raises(RuntimeError, match="engine 0 died"):
        producer.get(5)
    assert all(version >= step - 1 - 2 for step, version in seen)
    producer.stop()
    producer.join()
    assert not producer.thread.is_alive()
    # synchronous: made in the caller's thread, when asked
    sync = RolloutProducer(lambda step: (step, threading.current_thread().name), range(1, 3), 0, sampler, published=0)
    assert sync.get(1) == (1, threading.current_thread().name)


def test_engine_actors_match_the_in_process_engine_on_both_transports(ray_cluster, tiny_model_dir, local_engine):
    """Prompts split over two engines come back in order with the in-process engine's samples, before
    and after a weight push, whatever the transport; the pushed version is on every rollout."""
    from transformers import AutoModelForCausalLM

    prompts = [[1, 5, 6, 7], [1, 8, 9], [1, 10, 11, 12, 13], [1, 5, 5], [1, 9]]
    sampling = Sampling(8, 1.0, 1.0, seed=3)
    state = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    moved = {k: v + 0.02 * torch.randn(v.shape, generator=torch.Generator().manual_seed(1)) for k, v in state.items()}
    kwargs = dict(max_model_len=512, kv_cache_mb=64)
    for transport in ("distributed", "object_store"):
        engines = EngineActors(2, "vllm", str(tiny_model_dir), kwargs, transport=transport, timeout_s=30)
        try:
            for weights, version in ((state, 0), (moved, 1)):
                if version:
                    sent = engines.push(iter(weights.items()), version)
                    assert sent["bytes"] == sum(t.numel() * t.element_size() for t in weights.values())
                local_engine.load_weights(iter(weights.items()))
                got, want = engines.generate(prompts, sampling, 2), local_engine.generate(prompts, sampling, 2)
                assert [r.completion_ids for r in got] == [r.completion_ids for r in want], transport
                assert [r.prompt_ids for r in got] == [p for p in prompts for _ in range(2)]
                diff = max(abs(a - b) for r, q in zip(got, want) for a, b in zip(r.sampler_logprobs, q.sampler_logprobs))
                assert diff <= LOGPROB_ATOL, (transport, diff)
                assert {r.policy_version for r in got} == {version}
            # a push does not wait for a generation in flight: it is staged, and loaded before the next one
            long = engines.submit([[1, 5]] * 32, Sampling(400, 1.0, 1.0, seed=5), 4)
            time.sleep(0.5)  # the generation is under way
            t0 = time.perf_counter()
            engines.push(iter(state.items()), 2)
            pushed_after = time.perf_counter() - t0
            first = engines.gather(long)
            generation_s = time.perf_counter() - t0
            assert pushed_after < generation_s / 2, (transport, pushed_after, generation_s)
            assert {r.policy_version for r in first} == {1}
            engines.set_version(3)  # a step without an update: same weights, new version
            again = engines.generate(prompts, sampling, 2)
            local_engine.load_weights(iter(state.items()))
            assert [r.completion_ids for r in again] == [r.completion_ids for r in local_engine.generate(prompts, sampling, 2)]
            assert {r.policy_version for r in again} == {3}
        finally:
            engines.close()
    local_engine.load_weights(iter(state.items()))


def test_one_engine_actor_logs_the_in_process_run(ray_cluster, tmp_path):
    """Synchronous (max_staleness 0) with one engine actor: every metric the in-process run logs,
    equal (the same vLLM code on the same machine at one thread: any difference is a bug, never
    rounding); the sampler's logprobs, from another process, match the learner's."""
    _, local = _run(tmp_path, "in_process")
    _, actor = _run(tmp_path, "one_actor", "--rollout.num_engines", "1")
    assert len(actor) == len(local) == 5
    assert _without_timing(actor) == _without_timing(local)
    for row in actor[1:]:
        assert row["rollout/sampler_logprob_diff"] <= LOGPROB_ATOL
        assert row["rollout/staleness_max"] == 0 and row["time/sync_s"] > 0


def test_two_engine_actors_are_deterministic(ray_cluster, tmp_path):
    runs = [_run(tmp_path, f"two_{k}", "--rollout.num_engines", "2", steps=3)[1] for k in range(2)]
    assert _without_timing(runs[0]) == _without_timing(runs[1])
    assert len(runs[0]) == 4 and all(r["rollout/staleness_max"] == 0 for r in runs[0][1:])


def test_asynchronous_rollouts_are_at_most_k_updates_old(ray_cluster, tmp_path):
    _, rows = _run(tmp_path, "async", "--rollout.num_engines", "1", "--rollout.max_staleness", "1", "--algo.tis_cap", "2", steps=6)
    steps = rows[1:]
    assert len(steps) == 6 and all(r["rollout/staleness_max"] <= 1 for r in steps)
    assert steps[0]["rollout/staleness_max"] == 0  # the first step's rollouts come from the initial weights
    assert sum(r["rollout/staleness_mean"] for r in steps) >= 3  # the engine did run ahead of the learner
    assert all("policy/tis_weight_mean" in r for r in steps)


def test_a_killed_engine_fails_the_step_by_name_and_resume_finishes(ray_cluster, tmp_path):
    ray = ray_cluster
    timeout = 20.0
    args = ("--rollout.num_engines", "1", "--rollout.sync_timeout_s", str(timeout))
    killed = {}

    def kill_after_step_3():
        metrics = tmp_path / "killed" / "seed_0" / "metrics.jsonl"
        while not (metrics.exists() and any(json.loads(line)["step"] >= 3 for line in metrics.read_text().splitlines())):
            time.sleep(0.02)
        name = next(n["name"] for n in ray.util.list_named_actors(all_namespaces=True) if ":engine0:" in n["name"])
        ray.kill(ray.get_actor(name))
        killed["at"] = time.perf_counter()

    killer = threading.Thread(target=kill_after_step_3, daemon=True)
    killer.start()
    with pytest.raises(EngineError, match="engine 0") as e:
        _run(tmp_path, "killed", *args, steps=8)
    failed_after = time.perf_counter() - killed["at"]
    assert failed_after < timeout, (failed_after, str(e.value))
    assert "step" in str(e.value)
    cfg, rows = _run(tmp_path, "killed", *args, steps=8, resume=True)
    assert [r["step"] for r in rows] == list(range(9))
    assert json.loads((cfg.run_dir / "summary.json").read_text())["steps"] == 8
