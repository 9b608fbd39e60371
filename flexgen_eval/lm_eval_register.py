"""Make `--model flexgen` known to lm-evaluation-harness 0.4.13, which reads no plugin entry points.

Three routes, all ending in `register()`:
  1. the `lm_eval.models` entry point in setup.cfg (for lm-eval releases that scan it);
  2. `flexgen_lm_eval.pth`, installed at the root of site-packages, whose one line calls
     `register_if_lm_eval()` so the stock `lm_eval` / `lm-eval` / `python -m lm_eval` just works;
  3. the `flexgen-lm-eval` console script (flexgen_eval/lm_eval_cli.py).
"""
from __future__ import annotations

import os
import sys

MODEL_NAME = "flexgen"
TARGET = "flexgen_eval.lm_eval_backend:FlexGenLM"
PTH_NAME = "flexgen_lm_eval.pth"  # sorts after setuptools' __editable__ finder .pth, which makes us importable
PROGRAMS = ("lm_eval", "lm-eval")
MODULES = ("lm_eval", "lm_eval.__main__")
OPTIONS_WITH_VALUE = ("-X", "-W", "--check-hash-based-pycs")  # python options whose value is the next argument


def register() -> None:
    """Add `flexgen` to lm-eval's model registry as a lazy placeholder (our backend and torch load on use).

    lm_eval.models must be imported first: the registry fills itself with the built-in backends
    only while it is empty, so registering into an empty registry would hide `hf` and the rest.
    """
    import lm_eval.models  # noqa: F401
    from lm_eval.api.registry import model_registry

    if MODEL_NAME not in model_registry:
        model_registry.register(MODEL_NAME, target=TARGET)


def running_lm_eval(argv: list[str] | None = None) -> bool:
    """Whether this interpreter runs the lm_eval CLI: the console scripts or `python -m lm_eval`,
    interpreter options included (`python -X importtime -m lm_eval`, `python -u -m lm_eval`)."""
    argv = list(argv if argv is not None else getattr(sys, "orig_argv", sys.argv))
    if argv and _program(argv[0]) in PROGRAMS:  # the console script itself
        return True
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg == "-m":
            return i + 1 < len(argv) and argv[i + 1] in MODULES
        if arg.startswith("-m"):
            return arg[2:] in MODULES
        if arg in OPTIONS_WITH_VALUE:
            i += 2
            continue
        if arg == "-" or arg.startswith("-c"):
            return False
        if not arg.startswith("-"):  # the script python runs: `python /venv/bin/lm_eval ...`
            return _program(arg) in PROGRAMS
        i += 1
    return False


def _program(path: str) -> str:
    return os.path.basename(path).removesuffix(".exe")


def register_if_lm_eval() -> None:
    """The .pth hook: never let a failure here break interpreter start-up."""
    if not running_lm_eval():
        return
    try:
        register()
    except Exception as e:  # noqa: BLE001 - a broken hook must not stop lm_eval itself
        print(f"flexgen: could not register the lm-eval backend ({type(e).__name__}: {e})", file=sys.stderr)


def install_pth(site_dir: str | None = None) -> str:
    """Copy the hook into site-packages by hand, for installers that skipped it (see setup.py)."""
    import shutil
    import sysconfig

    target = os.path.join(site_dir or sysconfig.get_paths()["purelib"], PTH_NAME)
    shutil.copyfile(os.path.join(os.path.dirname(os.path.abspath(__file__)), PTH_NAME), target)
    return target


if __name__ == "__main__":
    if sys.argv[1:] != ["--install-pth"]:
        sys.exit("usage: python -m flexgen_eval.lm_eval_register --install-pth")
    print(install_pth())
