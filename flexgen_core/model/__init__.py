"""The model: its shape (spec), each family's weight names and maths (families/), the small layer
interface the scheduler calls, attention maths, checkpoint reading and the embedded model store.
The bottom room: imports no other room (only the `units` leaf)."""
from . import families  # noqa: F401  (registers every family in spec.FAMILIES)
