"""Embedding tables are looked up by row and stored once, wherever the policy puts them."""
import torch

from flexgen_core import LLM, Policy


def test_tied_embedding_is_stored_once(tiny_llama_tied_dir, tiny_opt_dir, tmp_path):
    from safetensors import safe_open

    for path in (tiny_llama_tied_dir, tiny_opt_dir):
        with safe_open(f"{path}/model.safetensors", "pt") as f:
            tensors = {k: f.get_slice(k).get_shape() for k in f.keys()}
        unique_numel = sum(torch.Size(s).numel() for k, s in tensors.items() if k != "lm_head.weight")
        with LLM.from_pretrained(path, policy=Policy(), offload_dir=str(tmp_path)) as llm:
            stored = llm.weights.nbytes()
        assert unique_numel * 4 <= stored < unique_numel * 4 + 16 * 64  # fp32, 16-byte alignment per tensor


def test_a_lookup_reads_only_the_rows_it_needs(tiny_llama_dir, tmp_path):
    """Untied Llama, all weights on disk: loading the embedding layer reads nothing, looking up
    three ids (two distinct) reads two rows."""
    with LLM.from_pretrained(tiny_llama_dir, policy=Policy(weights=(0, 0, 100)), offload_dir=str(tmp_path)) as llm:
        store, spec = llm.weights, llm.spec
        stats = llm.tiers.stats
        before = dict(stats.read)
        w = store.load(0)
        assert dict(stats.read) == before
        rows = w["model.embed_tokens.weight"].lookup(torch.tensor([[5, 9, 5]]))
        store.release(0)
        row_bytes = spec.hidden_size * 4
        assert stats.read["disk"] - before.get("disk", 0) == 2 * row_bytes
        with LLM.from_pretrained(tiny_llama_dir, policy=Policy(), offload_dir=str(tmp_path / "ref")) as ref:
            table = ref.weights.load(0)["model.embed_tokens.weight"]
            assert torch.equal(rows, table.lookup(torch.tensor([[5, 9, 5]])))


def test_close_frees_the_weights_while_the_model_is_still_referenced(tiny_llama_dir, tmp_path):
    """A benchmark that loads one system after another keeps its last handle around; closing must
    give the weights' memory back anyway."""
    llm = LLM.from_pretrained(tiny_llama_dir, policy=Policy(weights=(50, 50, 0)), offload_dir=str(tmp_path))
    resident = llm.memory_stats()["resident"]
    assert resident["gpu"] > 0 and resident["cpu"] > 0
    llm.close()
    assert llm.memory_stats()["resident"] == {"gpu": 0, "cpu": 0, "disk": 0}
    assert all(not buffer.parts for buffer in llm.weights.buffers)
