"""flexgen_eval: adapters (lm-eval, HELM), the `flexgen-eval` CLI and the benchmark harness."""
from flexgen_core import __version__  # noqa: F401
