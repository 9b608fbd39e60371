"""Sub-commands of `flexgen-eval`, one module each, plus argument types they share."""
import argparse


def size_arg(text: str) -> int:
    """argparse type for sizes such as 16GiB, 200GB, 1.5TB."""
    from flexgen_core.units import parse_size

    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def share_arg(text: str) -> float:
    """argparse type for --cpu-attention: on, off or a share in [0, 1]."""
    from flexgen_core.planning.policy import parse_cpu_attention

    try:
        return parse_cpu_attention(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e
