import os

import pytest
import tiny_models

# The compute device of every LLM a test builds: the CPU unless FLEXGEN_TEST_DEVICE says otherwise
# (`FLEXGEN_TEST_DEVICE=cuda` on a GPU machine). Always fp32, because the tests compare against HF fp32.
TEST_DEVICE = os.environ.get("FLEXGEN_TEST_DEVICE", "cpu")


@pytest.fixture(autouse=True, scope="session")
def _llm_defaults_to_the_test_device():
    from flexgen_core import LLM

    original = LLM.from_pretrained.__func__

    def from_pretrained(cls, name_or_dir, policy=None, device=None, dtype=None, **kwargs):
        return original(cls, name_or_dir, policy, device or TEST_DEVICE, dtype or "float32", **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(LLM, "from_pretrained", classmethod(from_pretrained))
        yield


@pytest.fixture
def prefix_passes(monkeypatch) -> list[int]:
    """The prefix length of every shared-prefix pass the scheduler runs (one per layer per block)."""
    from flexgen_core.runtime.scheduler import Scheduler

    passes = []
    original = Scheduler._prefix_layer

    def spy(self, job, *args):
        passes.append(job.prefix_len)
        return original(self, job, *args)

    monkeypatch.setattr(Scheduler, "_prefix_layer", spy)
    return passes


def data_dir() -> str:
    """FLEXGEN_DATA_DIR, or skip with the reason."""
    path = os.environ.get("FLEXGEN_DATA_DIR")
    if not path:
        pytest.skip("FLEXGEN_DATA_DIR is not set (point it at the shared benchmark data)")
    if not os.path.isdir(path):
        pytest.skip(f"FLEXGEN_DATA_DIR={path} does not exist")
    return path


@pytest.fixture(scope="session")
def flexgen_data_dir():
    return data_dir()


@pytest.fixture(scope="session")
def tiny_opt_dir(tmp_path_factory):
    return tiny_models.tiny_opt(str(tmp_path_factory.mktemp("tiny-opt")))


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    return tiny_models.tiny_llama(str(tmp_path_factory.mktemp("tiny-llama")))


@pytest.fixture(scope="session")
def tiny_llama_tied_dir(tmp_path_factory):
    return tiny_models.tiny_llama(str(tmp_path_factory.mktemp("tiny-llama-tied")), seed=1,
                                  tie_word_embeddings=True, num_key_value_heads=1)


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tmp_path_factory):
    return tiny_models.tiny_llama(str(tmp_path_factory.mktemp("tiny-qwen2")), seed=2, model_type="qwen2",
                                  tokenizer=False)


@pytest.fixture(scope="session")
def tiny_opt_postln_dir(tmp_path_factory):
    # opt-350m's layout: post-LayerNorm and projected embeddings
    return tiny_models.tiny_opt(str(tmp_path_factory.mktemp("tiny-opt-postln")), seed=3, tokenizer=False,
                                do_layer_norm_before=False, word_embed_proj_dim=32)
