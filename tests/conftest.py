import os

# vLLM in-process, no torch.compile, no Ray token files: set before anything imports them.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# the real datasets (GSM8K, MATH-500) lie in shared/data beside the checkout
DATA = Path(os.environ.get("RLVR_SHARED_DATA", REPO.parent / "shared" / "data"))


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA device")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny Llama (hidden 64, 2 heads of dim 32) and its word tokenizer, saved like any HF folder."""
    from rlvr.config import TinyModelConfig
    from rlvr.chat import train_word_tokenizer
    from rlvr.models import build_tiny_model
    from rlvr.tasks import kinds_vocabulary

    out = tmp_path_factory.mktemp("tiny_model")
    tok = train_word_tokenizer([" ".join(kinds_vocabulary())])
    model = build_tiny_model(TinyModelConfig(max_position_embeddings=512), tok, seed=0)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def vllm_engine(tiny_model_dir):
    """One in-process vLLM engine for the session (each start costs ~20 s on these CPUs)."""
    from rlvr.rollouts import make_engine

    engine = make_engine("vllm", str(tiny_model_dir), max_model_len=512, kv_cache_mb=64)
    yield engine
    engine.close()


def hub_like_texts() -> list[str]:
    """What the hub-like fixtures' BPE tokenizers learn from: the shipped GSM8K and MATH text and
    the synthetic tasks' text."""
    import json

    from rlvr.tasks import kinds_vocabulary, world_corpus, world_vocabulary

    texts = []
    for line in open(DATA / "gsm8k" / "train.jsonl"):
        row = json.loads(line)
        texts += [row["question"], row["answer"]]
    for line in open(DATA / "math" / "math500_test.jsonl"):
        row = json.loads(line)
        texts += [row["problem"], row["solution"]]
    return texts + world_corpus(2000) + [" ".join(world_vocabulary()), " ".join(kinds_vocabulary())]


@pytest.fixture(scope="session", params=["chatml", "llama3"])
def hub_model_dir(request, tmp_path_factory) -> Path:
    """A tiny model saved like a hub chat model: byte-level BPE (2,048 ids), its special tokens at the
    end of the vocabulary, a chat template, several stop ids in generation_config. `chatml`: a Qwen2
    with Qwen2.5's tokens (pad = <|endoftext|>, eos = <|im_end|>); `llama3`: a Llama with Llama 3's
    (eos = <|eot_id|>, three stop ids, no pad token)."""
    from rlvr.config import TinyModelConfig
    from rlvr.models import save_tiny_model

    arch = {"chatml": "qwen2", "llama3": "llama"}[request.param]
    cfg = TinyModelConfig(arch=arch, tokenizer=request.param, max_position_embeddings=1024)
    return save_tiny_model(cfg, hub_like_texts(), seed=0, out=tmp_path_factory.mktemp("hub") / request.param)
