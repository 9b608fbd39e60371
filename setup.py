"""Metadata lives in setup.cfg. This file only installs flexgen_lm_eval.pth at the root of
site-packages (the start-up hook that lets the stock `lm_eval` CLI find `--model flexgen`), which
declarative config cannot express: regular wheels get it from build_py, editable installs from
editable_wheel. Without it the hook can still be added by hand:
`python -m flexgen_eval.lm_eval_register --install-pth`.
"""
import os

from setuptools import setup
from setuptools.command.build_py import build_py

PTH = "flexgen_lm_eval.pth"
PTH_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "flexgen_eval", PTH)


class BuildPyWithHook(build_py):
    def run(self):
        super().run()
        if not self.editable_mode:
            self.copy_file(PTH_SOURCE, os.path.join(self.build_lib, PTH), preserve_mode=False)

    def get_outputs(self, include_bytecode=True):
        extra = [] if self.editable_mode else [os.path.join(self.build_lib, PTH)]
        return super().get_outputs(include_bytecode) + extra


def editable_wheel_with_hook():
    try:
        from setuptools.command.editable_wheel import editable_wheel
    except ImportError:  # setuptools too old for PEP 660: `pip install -e` goes through develop
        return None

    class _WithHook:
        """Wraps setuptools' editable strategy: writes its files, then our .pth next to them."""

        def __init__(self, inner):
            self.inner = inner

        def __enter__(self):
            self.inner.__enter__()
            return self

        def __exit__(self, *exc):
            return self.inner.__exit__(*exc)

        def __call__(self, wheel, files, mapping):
            self.inner(wheel, files, mapping)
            with open(PTH_SOURCE, "rb") as f:
                wheel.writestr(PTH, f.read())

    class EditableWheelWithHook(editable_wheel):
        def _select_strategy(self, *args, **kwargs):
            return _WithHook(super()._select_strategy(*args, **kwargs))

    return EditableWheelWithHook


commands = {"build_py": BuildPyWithHook}
if editable_wheel_with_hook() is not None:
    commands["editable_wheel"] = editable_wheel_with_hook()

# package data too, so that an sdist carries the hook's source
setup(cmdclass=commands, package_data={"flexgen_eval": [PTH]})
