"""flexgen_core: throughput-oriented offloading inference runtime (the FlexGen design).

Rooms, each importing only those before it: model/ (shape, families, layer maths), memory/ (tiers,
I/O queues, KV cache, compression, weights), planning/ (policy, sizes, cost model, hardware,
planner), runtime/ (LLM, block scheduler). units.py is a leaf for all; profiler.py, above them
all, measures a machine by running the model."""
__version__ = "0.1.0"

from .model.spec import ModelSpec  # noqa: E402
from .planning.policy import Policy  # noqa: E402
from .runtime.llm import LLM  # noqa: E402
from .runtime.outputs import CompletionOutput, RequestOutput, ScoreOutput  # noqa: E402
from .runtime.sampling import SamplingParams  # noqa: E402

__all__ = ["LLM", "Policy", "SamplingParams", "ModelSpec", "RequestOutput", "CompletionOutput", "ScoreOutput",
           "__version__"]
