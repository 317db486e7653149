"""The two pictures of `pipelines cost` and `pipelines route tune`, as SVG (the plugin shows the same).

Inputs: a cost report (`cost.report`) or a routing frontier (`pipelines.serving.route_tune.report`).
Outputs: SVG bytes: the monthly bill against monthly volume (self-hosted machines kept up all month
against each compared API, the break-even volumes marked), and the frontier (accuracy against the
share routed upstream, the chosen and served thresholds marked).
"""
from __future__ import annotations

import io

from pipelines.economics import cost

COLORS = ("#c5221f", "#e37400", "#8430ce", "#007b83")


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    return plt, fig, ax


def _svg(plt, fig) -> bytes:
    import matplotlib

    buf = io.BytesIO()
    fig.tight_layout()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "pipelines"}):  # text stays text
        fig.savefig(buf, format="svg", metadata={"Date": None})  # no timestamp: same report, same bytes
    plt.close(fig)
    return buf.getvalue()


def volume_svg(report: dict) -> bytes:
    """Monthly bill against monthly requests, log-log: the self-hosted steps (one more machine each
    time capacity runs out) and one line per compared API, with each break-even volume marked."""
    if "rows" not in report:
        raise ValueError(f"{report.get('model')}: nothing to plot: {report.get('unknown', 'no measurement')}")
    m, c = report["measured"], report["capacity"]
    capacity = cost.Capacity(report["hardware"], c["requests_per_s"], m["input_tokens_per_request"] or 0.0,
                             m["output_tokens_per_request"] or 0.0, c["p99_ms"], c["concurrency"])
    hours, per_hour = report["hours_per_month"], report["usd_per_hour"]
    plt, fig, ax = _figure()
    own = cost.curve(capacity, per_hour, hours, 0.0)
    ax.step([p["requests"] for p in own], [p["self_hosted_usd"] for p in own], where="post", color="#0b57d0",
            linewidth=2, label=f"self-hosted on {report['hardware']} (${per_hour:g}/h)")
    for i, (color, row) in enumerate(zip(COLORS, report["rows"])):
        line = cost.curve(capacity, per_hour, hours, row["api_usd_per_1k"] / 1000)
        ax.plot([p["requests"] for p in line], [p["api_usd"] for p in line], color=color, label=row["api"])
        even = row["break_even_requests_per_month"]
        if even is not None:
            ax.plot([even], [per_hour * hours], "o", color=color)
            ax.annotate(f"break-even {even:,.0f}/month", (even, per_hour * hours), textcoords="offset points",
                        xytext=(6, -14 - 12 * i), fontsize=8, color=color)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("requests a month")
    ax.set_ylabel("US$ a month")
    ax.set_title(f"{report['model']} v{report['champion']}: self-hosted against API prices")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    return _svg(plt, fig)


def frontier_svg(doc: dict) -> bytes:
    """Accuracy against the share of requests routed upstream, one point per threshold, with the
    floor, the chosen threshold and the one serving uses marked."""
    if "frontier" not in doc:
        raise ValueError(f"{doc.get('model')}: nothing to plot: {doc.get('unknown', 'no frontier')}")
    plt, fig, ax = _figure()
    points = doc["frontier"]
    ax.plot([p["upstream_share"] * 100 for p in points], [p["accuracy"] for p in points], color="#0b57d0",
            label="threshold 0 .. 1")
    ax.axhline(doc["chosen"]["min_accuracy"], color="#5f6368", linestyle="--", linewidth=1, label="floor")
    marks = (("chosen", doc["chosen"]["threshold"], "#188038", "o"), ("served", doc["serving"]["threshold"],
                                                                       "#c5221f", "x"))
    for name, threshold, color, marker in marks:
        p = min(points, key=lambda q: abs(q["threshold"] - threshold))
        ax.plot([p["upstream_share"] * 100], [p["accuracy"]], marker, color=color, markersize=9,
                label=f"{name}: threshold {threshold:g}")
    ax.set_xlabel(f"% of requests sent to {doc['upstream']['model']}")
    ax.set_ylabel("accuracy (validation split)")
    ax.set_title(f"{doc['model']} v{doc['champion']}: hybrid routing's cost-quality frontier")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _svg(plt, fig)
