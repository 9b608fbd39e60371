"""flexgen_core: throughput-oriented offloading inference runtime (the FlexGen design)."""
__version__ = "0.1.0"

from .llm import LLM  # noqa: E402
from .outputs import CompletionOutput, RequestOutput, ScoreOutput  # noqa: E402
from .policy import Policy  # noqa: E402
from .sampling import SamplingParams  # noqa: E402
from .spec import ModelSpec  # noqa: E402

__all__ = ["LLM", "Policy", "SamplingParams", "ModelSpec", "RequestOutput", "CompletionOutput", "ScoreOutput",
           "__version__"]
