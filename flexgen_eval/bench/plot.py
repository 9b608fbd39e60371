"""Throughput vs latency, one point per system and batch (the shape of the paper's Figure 1)."""
from __future__ import annotations

from .systems import OURS

MARKERS = {"flexgen": ("o", "tab:red"), "flexgen-c": ("*", "tab:orange"), "accelerate": ("s", "tab:blue"), "hf": ("^", "tab:green"),
           "flexgen-0.1.8": ("D", "tab:purple")}


def plot_run(results: list[dict], path: str, title: str | None = None) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    seen = set()
    for res in results:
        for r in res["systems"]:
            if not r.get("throughput_tokens_per_s"):
                continue
            marker, color = MARKERS.get(r["system"], ("x", "gray"))
            label = r["system"] if r["system"] not in seen else None
            seen.add(r["system"])
            ax.scatter(r["latency_s"], r["throughput_tokens_per_s"], marker=marker, color=color, s=60, label=label,
                       zorder=3)
            ax.annotate(f"b={r['batch']}", (r["latency_s"], r["throughput_tokens_per_s"]),
                        textcoords="offset points", xytext=(6, 4), fontsize=8)
        for ours in res["systems"]:
            if ours["system"] in OURS and ours.get("io_bound_throughput_tokens_per_s"):
                name, color = ours["system"], MARKERS[ours["system"]][1]
                ax.axhline(ours["io_bound_throughput_tokens_per_s"], color=color, ls=":", lw=1,
                           label=f"{name}: I/O bound (cost model)" if "io " + name not in seen else None)
                seen.add("io " + name)
    xs = [r["latency_s"] for res in results for r in res["systems"] if r.get("throughput_tokens_per_s")]
    ys = [r["throughput_tokens_per_s"] for res in results for r in res["systems"] if r.get("throughput_tokens_per_s")]
    ys += [ln.get_ydata()[0] for ln in ax.get_lines()]
    for axis, values, set_scale in ((ax.xaxis, xs, ax.set_xscale), (ax.yaxis, ys, ax.set_yscale)):
        if values and max(values) > 10 * min(values):  # log only when the points span a decade
            set_scale("log")
    if xs:
        ax.set_xlim(min(xs) / 1.3, max(xs) * 1.3)
    ax.set_xlabel("latency: prefill + decode of one batch (s)")
    ax.set_ylabel("generation throughput (token/s)")
    first = results[0] if results else {}
    if title is None and first:
        budget = first.get("budget_bytes", {})
        from flexgen_core.units import format_size as gib
        title = (f"{first['model']} {first['dtype']}, prompt {first['prompt_len']} gen {first['gen_len']}, "
                 f"{first['device']}\nbudget gpu {gib(budget.get('gpu', 0))}, cpu {gib(budget.get('cpu', 0))}")
    ax.set_title(title or "", fontsize=9)
    from matplotlib.ticker import NullFormatter

    if ax.get_xscale() == "log":
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.grid(True, which="both", alpha=0.3)
    if seen:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
