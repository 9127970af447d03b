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
    from rlvr.models import build_tiny_model, train_word_tokenizer
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
