"""The `flexgen-eval` CLI: version, env, fetch-model and demo run, print, and fail in one line."""
from __future__ import annotations

import json
import subprocess
import sys

from flexgen_core import __version__
from flexgen_core.model import store as model_store
from flexgen_eval.cli import main


def test_version(capsys):
    assert main(["version"]) == 0
    assert capsys.readouterr().out.strip() == __version__


def test_env_text(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("FLEXGEN_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("FLEXGEN_EVAL_CACHE", str(tmp_path / "cache"))
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    for key in ("python", "torch", "cuda", "transformers", "cache dir", "FLEXGEN_DATA_DIR"):
        assert key in out
    assert f"{tmp_path} (exists)" in out
    assert "not fetched" in out


def test_env_json_in_subprocess(tmp_path):
    # The way users run it; also checks that the module entry point works.
    env = {"PATH": "/usr/bin:/bin", "FLEXGEN_DATA_DIR": str(tmp_path / "missing"),
           "FLEXGEN_EVAL_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "flexgen_eval.cli", "env", "--json"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["flexgen_eval"] == __version__
    assert info["packages"]["torch"] and isinstance(info["cuda_available"], bool)
    assert info["cache_dir"] == str(tmp_path / "cache")
    assert info["flexgen_data_dir_exists"] is False


def test_fetch_model_prints_path(capsys, monkeypatch):
    seen = {}

    def fake_fetch(name, cache_dir=None, force=False):
        seen.update(name=name, cache_dir=cache_dir, force=force)
        return "/cache/models/x"

    monkeypatch.setattr(model_store, "fetch_model", fake_fetch)
    assert main(["fetch-model", "smollm2-135m", "--cache-dir", "/c", "--force"]) == 0
    assert capsys.readouterr().out.strip() == "/cache/models/x"
    assert seen == {"name": "smollm2-135m", "cache_dir": "/c", "force": True}
    assert main(["fetch-model"]) == 0 and seen["name"] == model_store.DEFAULT_MODEL


def test_fetch_model_unknown_name_is_one_line(capsys, tmp_path):
    assert main(["fetch-model", "no-such-model", "--cache-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown embedded model 'no-such-model'" in err


def test_demo_bad_model_is_one_line(capsys, tmp_path):
    assert main(["demo", "--model", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not an embedded model" in err[0]
