#!/usr/bin/env python3
"""Turn the per-run TSV written by run.sh into the markdown report (medians with min-max).

Usage: summarize.py RUNS.tsv META.md > results.md

Medians, not means: on a shared 2-vCPU VM single runs swing by 10-15 % and p99 can double, so the
median of alternated runs is the figure that stays put between sessions (see GUIDE.md section 5).
"""

import csv
import statistics
import sys

FIELDS = ["rps", "p50_ms", "p99_ms", "cpu_ms_per_1k", "rss_mib"]
BASELINE = "nginx"


def spread(values, fmt):
    """'median (min-max)' of a list of floats, or a dash when there is nothing to show."""
    vals = [v for v in values if v is not None]
    if not vals:
        return "-"
    med = statistics.median(vals)
    if len(vals) == 1:
        return fmt.format(med)
    return f"{fmt.format(med)} ({fmt.format(min(vals))}–{fmt.format(max(vals))})"


def num(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: summarize.py RUNS.tsv META.md")
    with open(sys.argv[1], newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    with open(sys.argv[2]) as f:
        meta = f.read()

    # (scenario, conns) -> contender -> list of rows, keeping first-seen contender order.
    groups = {}
    for row in rows:
        key = (row["scenario"], int(row["conns"]))
        groups.setdefault(key, {}).setdefault(row["contender"], []).append(row)

    out = [meta.rstrip(), ""]
    for (scenario, conns), by_contender in groups.items():
        out.append(f"### {scenario}, {conns} connections")
        out.append("")
        out.append(
            "| contender | runs | RPS | p50 ms | p99 ms | CPU-ms / 1k req | peak RSS MiB "
            "| RPS vs nginx | CPU/1k vs nginx | non-2xx / socket errors |"
        )
        out.append("|---|---|---|---|---|---|---|---|---|---|")
        base = by_contender.get(BASELINE, [])
        base_rps = [num(r["rps"]) for r in base if num(r["rps"]) is not None]
        base_cpu = [num(r["cpu_ms_per_1k"]) for r in base if num(r["cpu_ms_per_1k"]) is not None]
        base_rps_med = statistics.median(base_rps) if base_rps else None
        base_cpu_med = statistics.median(base_cpu) if base_cpu else None
        for contender, runs in by_contender.items():
            cols = {k: [num(r[k]) for r in runs] for k in FIELDS}
            rps_vals = [v for v in cols["rps"] if v is not None]
            cpu_vals = [v for v in cols["cpu_ms_per_1k"] if v is not None]
            rps_ratio = (
                f"{statistics.median(rps_vals) / base_rps_med:.2f}×"
                if rps_vals and base_rps_med
                else "-"
            )
            cpu_ratio = (
                f"{statistics.median(cpu_vals) / base_cpu_med:.2f}×"
                if cpu_vals and base_cpu_med
                else "-"
            )
            non2xx = sum(int(r["non2xx"] or 0) for r in runs)
            sockerr = sum(int(r["socket_errors"] or 0) for r in runs)
            out.append(
                f"| {contender} | {len(runs)} | {spread(cols['rps'], '{:,.0f}')} "
                f"| {spread(cols['p50_ms'], '{:.2f}')} | {spread(cols['p99_ms'], '{:.2f}')} "
                f"| {spread(cols['cpu_ms_per_1k'], '{:.1f}')} | {spread(cols['rss_mib'], '{:.1f}')} "
                f"| {rps_ratio} | {cpu_ratio} | {non2xx} / {sockerr} |"
            )
        out.append("")

    out.append("<details><summary>Every run (in the order run)</summary>")
    out.append("")
    header = list(rows[0].keys()) if rows else []
    if header:
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "---|" * len(header))
        for row in rows:
            out.append("| " + " | ".join(row[h] for h in header) + " |")
    out.append("")
    out.append("</details>")
    print("\n".join(out))


if __name__ == "__main__":
    main()
