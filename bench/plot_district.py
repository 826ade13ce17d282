"""Plot the district sweep: stored throughput and end-to-end delay against the number of gateways.

Why a separate script: the sweep takes minutes, the plot a second; keeping
the figures in JSON (`bench/district.py --sweep ... --json FILE`) lets the
plot be redrawn, restyled or compared without measuring again.

    python bench/district.py --sweep 250,500,1000,2000,4000 --json /tmp/district.json
    python bench/plot_district.py /tmp/district.json docs/district.png

Needs matplotlib (`pip install matplotlib`); it is not a runtime dependency.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

GENERATOR_BOUND_MS = 1000.0


def plot(data: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(data["results"], key=lambda r: r["gateways"])
    gw = [r["gateways"] for r in rows]
    args = data.get("args", {})
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 7.5), sharex=True)
    top.plot(gw, [r["offered_points_s"] for r in rows], "o--", color="grey", label="offered (published) points/s")
    top.plot(gw, [r["sustained_points_s"] for r in rows], "o-", color="tab:blue", label="stored points/s")
    top.set_ylabel("points per second")
    top.grid(True, alpha=0.3)
    top.legend(loc="upper left")
    bottom.plot(gw, [r["delay_p50_ms"] for r in rows], "o-", color="tab:green", label="delay p50")
    bottom.plot(gw, [r["delay_p99_ms"] for r in rows], "o-", color="tab:red", label="delay p99")
    bottom.plot(gw, [r["delay_max_ms"] for r in rows], "x:", color="tab:red", alpha=0.5, label="delay max")
    bottom.set_yscale("log")
    bottom.set_ylabel("sample ts -> stored (ms, log)")
    bottom.set_xlabel("simulated classroom gateways (log scale)")
    bottom.set_xscale("log")
    bottom.set_xticks(gw, [f"{g:,}" for g in gw])
    bottom.minorticks_off()
    # Where the load generator itself could not keep its schedule (lag p99 > 1 s) the
    # figures are bounded by this machine's cores, not by the system under test.
    bound = [r for r in rows if r.get("generator_lag_p99_ms", 0) > GENERATOR_BOUND_MS]
    for ax in (top, bottom):
        for r in bound:
            ax.axvspan(r["gateways"] * 0.93, r["gateways"] * 1.07, color="orange", alpha=0.2, lw=0)
    if bound:
        top.text(0.99, 0.02, "shaded: the gateway simulator itself lagged (machine saturated)",
                 transform=top.transAxes, ha="right", fontsize=8, color="darkorange")
    bottom.grid(True, which="both", alpha=0.3)
    bottom.legend(loc="upper left")
    lost = [r["gateways"] for r in rows if not r["ok"]]
    title = (f"campus-iot district: 1 Mosquitto, {args.get('workers', 1)} ingest worker(s) -> {args.get('store', '?')}\n"
             f"each gateway: 1 six-metric sample + 1 heartbeat every {args.get('interval_min', '?')}-"
             f"{args.get('interval_max', '?')} s, {args.get('seconds', '?')} s per point"
             + (f"; LOSS at {lost}" if lost else "; nothing lost at any point"))
    fig.suptitle(title, fontsize=10)
    fig.text(0.01, 0.005, data.get("machine", ""), fontsize=6, color="grey")
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("figures", type=Path, help="JSON written by bench/district.py --json")
    parser.add_argument("out", type=Path, nargs="?", default=Path("docs/district.png"),
                        help="PNG to write (default docs/district.png)")
    args = parser.parse_args(argv)
    plot(json.loads(args.figures.read_text()), args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
