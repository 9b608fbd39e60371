"""An offload directory keeps copies of disk weights for later runs under a size cap, least recently
used pruned first, never one a live process uses; `flexgen-eval cache list|clean` shows and frees them."""
import json
import os
import tempfile

import pytest

from flexgen_core import LLM, Policy
from flexgen_core.memory import scratch, weight_copies
from flexgen_eval.cli import build_parser, run_command

SPLITS = [(0, 0, 100), (0, 75, 25), (0, 50, 50)]  # every new split is a new copy of its disk share


def load(path, offload, split):
    return LLM.from_pretrained(path, policy=Policy(weights=split), offload_dir=str(offload))


def splits_kept(offload):
    return [tuple(c.about["split"]) for c in weight_copies.copies(str(offload))]


def test_new_splits_prune_the_least_recently_used_copies(tiny_llama_dir, tmp_path, monkeypatch):
    monkeypatch.delenv(weight_copies.KEEP_ENV, raising=False)
    for split in SPLITS:
        load(tiny_llama_dir, tmp_path, split).close()
    # by default twice the copy in use (the 50% one): it and the 25% one fit, the oldest (100%) went
    assert splits_kept(tmp_path) == [(0, 75, 25), (0, 50, 50)]
    (newest,) = [c for c in weight_copies.copies(str(tmp_path)) if c.about["split"] == [0, 50, 50]]
    assert newest.about["model"] == tiny_llama_dir and newest.about["dtype"] == "float32" and not newest.in_use
    load(tiny_llama_dir, tmp_path, SPLITS[1]).close()  # reused, so the most recent; twice its 25% is too
    assert splits_kept(tmp_path) == [(0, 75, 25)]  # little for the 50% copy, the least recently used now


def test_a_copy_in_use_is_never_pruned(tiny_llama_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(weight_copies.KEEP_ENV, "0")
    first = load(tiny_llama_dir, tmp_path, SPLITS[0])
    second = load(tiny_llama_dir, tmp_path, SPLITS[1])
    assert splits_kept(tmp_path) == [(0, 0, 100), (0, 75, 25)]  # the first is still open
    first.close()
    second.close()
    load(tiny_llama_dir, tmp_path, SPLITS[2]).close()
    assert splits_kept(tmp_path) == [(0, 50, 50)]


def test_the_cap_is_a_setting(tiny_llama_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(weight_copies.KEEP_ENV, "unlimited")
    for split in SPLITS:
        load(tiny_llama_dir, tmp_path, split).close()
    assert len(splits_kept(tmp_path)) == 3
    monkeypatch.setenv(weight_copies.KEEP_ENV, "lots")
    with pytest.raises(ValueError, match="FLEXGEN_OFFLOAD_KEEP='lots'.*or 'unlimited'"):
        load(tiny_llama_dir, tmp_path / "other", SPLITS[0])


def test_cache_list_and_clean(tiny_llama_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(weight_copies.KEEP_ENV, "unlimited")
    for split in SPLITS[:2]:
        load(tiny_llama_dir, tmp_path, split).close()
    held = load(tiny_llama_dir, tmp_path, SPLITS[2])
    stale = tempfile.mkdtemp(prefix=scratch.SCRATCH_PREFIX, dir=tmp_path)
    with open(os.path.join(stale, scratch.OWNER_FILE), "w") as f:
        json.dump({**scratch.this_process(), "pid": 2 ** 22 + 12345}, f)  # beyond pid_max: gone

    def cli(*argv):
        capsys.readouterr()
        assert run_command(build_parser().parse_args(["cache", *argv, "--offload-dir", str(tmp_path)])) == 0
        return capsys.readouterr().out

    listed = cli("list")
    assert "3 weight copies" in listed and listed.count("IN USE") == 1 and "split 0/50/50" in listed
    assert "scratch left by processes that are gone: 1" in listed and stale in listed
    cleaned = cli("clean")
    assert cleaned.count("removed") == 3 and "kept 1 copy in use" in cleaned and "freed" in cleaned
    assert splits_kept(tmp_path) == [(0, 50, 50)] and not os.path.exists(stale)
    assert held.generate([[5, 6]])[0].outputs[0].token_ids  # the copy in use still works
    held.close()


def test_cache_refuses_a_directory_that_is_not_there(tmp_path, capsys):
    args = build_parser().parse_args(["cache", "list", "--offload-dir", str(tmp_path / "nope")])
    assert run_command(args) == 1
    assert "no such offload directory" in capsys.readouterr().err
