"""report: one table, a row per compression stage (reader and retriever): parameters, file size,
p50 latency per 256-token window at 1 and 2 threads (from benchmarks/compression.py's JSON),
accuracy on SQuAD dev-42 (EM/F1 for the reader, dense R@1/5/20 for the retriever), plus a
Pareto plot of latency and size against accuracy. Missing evaluations are run (one thread) and
cached with --evaluate; the numbers in the table come only from those files.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from build_tools.compress.common import onnx_parameters
from build_tools.compress.variants import DEFAULT_SPEC, DEV42, Variant, cached_evaluation, load_spec
from build_tools.paths import PROJECT_ROOT

MB = 1_000_000


def size_and_params(v: Variant, root: Path) -> tuple[int, int]:
    """(bytes on disk, parameter count) of the model file(s) the variant loads."""
    path = v.path(root)
    if v.is_torch:
        files = list(path.glob("*.safetensors"))
        from safetensors import safe_open

        params = 0
        for f in files:
            with safe_open(str(f), "pt") as st:
                for key in st.keys():  # noqa: SIM118 - safe_open is not a dict
                    if not key.endswith("position_ids"):
                        params += _numel(st.get_slice(key).get_shape())
        return sum(f.stat().st_size for f in files), params
    weights = v.weights_path(root)
    return path.stat().st_size + (weights.stat().st_size if weights else 0), onnx_parameters(path)


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def accuracy_cells(kind: str, ev: dict | None) -> tuple[str, float | None]:
    """Table text and the number plotted (F1 or dense R@5 in %)."""
    if not ev:
        return "not evaluated", None
    if kind == "reader":
        return f"EM {ev['exact_match']:.2f} / F1 {ev['f1']:.2f}", ev["f1"]
    d = ev["dense"]
    return f"R@1 {100 * d['R@1']:.2f} / R@5 {100 * d['R@5']:.2f} / R@20 {100 * d['R@20']:.2f}", 100 * d["R@5"]


def build_rows(variants: list[Variant], bench: dict, evals: dict, root: Path) -> list[dict]:
    rows = []
    latency = bench.get("latency", {})
    for v in variants:
        row = {"name": v.name, "kind": v.kind, "stage": v.stage, "exists": v.exists(root), "notes": v.notes}
        if row["exists"]:
            row["bytes"], row["params"] = size_and_params(v, root)
        for t in (1, 2):
            lat = latency.get(f"{v.name}@{t}")
            row[f"p50_{t}"] = lat["p50_ms"] if lat else None
            row[f"speedup_{t}"] = lat.get("speedup_vs_torch_fp32") if lat else None
        ev = evals.get(v.same_as or v.name)
        row["accuracy"], row["score"] = accuracy_cells(v.kind, ev)
        if v.same_as and ev:
            row["accuracy"] += f" (= {v.same_as}, parity-checked export)"
        row["evaluation"] = ev
        rows.append(row)
    return rows


def markdown(rows: list[dict], data: Path, limit: int, retriever_limit: int) -> str:
    def cell(x, fmt):
        return "—" if x is None else format(x, fmt)

    intro = (f"Accuracy on {data.name}: reader EM/F1 (official SQuAD normalisation, always answering) on the first "
             f"{limit or 'all'} questions; retriever dense R@1/5/20 of each question's own paragraph among all the "
             f"file's paragraphs, on the first {retriever_limit or 'all'} answerable questions. Latency: one window of "
             "256 tokens, batch 1, median, `python -m benchmarks.compression`; × = speed-up over the PyTorch fp32 "
             "teacher of the same kind measured in the same run.")
    lines = [intro, "",
             "| variant | stage | params | file MB | p50 ms 1 thr | × 1 thr | p50 ms 2 thr | × 2 thr | accuracy |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        if not r["exists"]:
            lines.append(f"| {r['name']} | {r['stage']} | — | — | — | — | — | — | not built ({r['notes']}) |")
            continue
        lines.append(f"| {r['name']} | {r['stage']} | {r['params'] / 1e6:.2f} M | {r['bytes'] / MB:.1f} | "
                     f"{cell(r['p50_1'], '.1f')} | {cell(r['speedup_1'], '.2f')} | {cell(r['p50_2'], '.1f')} | "
                     f"{cell(r['speedup_2'], '.2f')} | {r['accuracy']} |")
    return "\n".join(lines) + "\n"


def targets(rows: list[dict], max_f1_loss: float = 1.5, min_speedup: float = 8.0, max_size_ratio: float = 1 / 8,
            max_pair_mb: float = 25.0, max_r5_loss: float = 1.0) -> str:
    """Issue #3's targets checked per variant against the PyTorch fp32 teachers' rows."""
    lines = ["| variant | ΔF1 or ΔR@5 vs fp32 teacher | × vs PyTorch fp32 (1 / 2 thr) | size / teacher | meets |",
             "|---|---:|---:|---:|---|"]
    best_retriever, accurate_readers = None, []
    for kind in ("reader", "retriever"):
        teacher = next((r for r in rows if r["kind"] == kind and r["notes"] and r["exists"] and
                        r["name"].endswith("-pt") and "teacher" in r["name"]), None)
        if teacher is None or teacher["score"] is None:
            continue
        for r in rows:
            if r["kind"] != kind or not r["exists"] or r["score"] is None or r is teacher:
                continue
            delta = r["score"] - teacher["score"]
            ratio = r["bytes"] / teacher["bytes"]
            speed = [r.get("speedup_1"), r.get("speedup_2")]
            if kind == "reader":
                if delta >= -max_f1_loss and not r["name"].endswith("-pt"):
                    accurate_readers.append(r)
                ok = delta >= -max_f1_loss and all(x and x >= min_speedup for x in speed) and ratio <= max_size_ratio
            else:
                ok = delta >= -max_r5_loss
                if ok and (best_retriever is None or r["bytes"] < best_retriever["bytes"]):
                    best_retriever = r
            lines.append(f"| {r['name']} | {delta:+.2f} | {speed[0] or '—'} / {speed[1] or '—'} | {ratio:.3f} | "
                         f"{'yes' if ok else 'no'} |")
    if best_retriever and accurate_readers:
        smallest = min(accurate_readers, key=lambda r: r["bytes"])
        if smallest:
            total = (smallest["bytes"] + best_retriever["bytes"]) / MB
            lines.append(f"\nSmallest reader within {max_f1_loss} F1 ({smallest['name']}) + smallest retriever "
                         f"within {max_r5_loss} R@5 "
                         f"({best_retriever['name']}): {total:.1f} MB (target ≤ {max_pair_mb:.0f} MB: "
                         f"{'yes' if total <= max_pair_mb else 'no'}).")
    return "\n".join(lines) + "\n"


def pareto(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated (lower x and higher y both better)."""
    keep = []
    for i, (x, y) in enumerate(points):
        if not any((x2 <= x and y2 >= y) and (x2 < x or y2 > y) for j, (x2, y2) in enumerate(points) if j != i):
            keep.append(i)
    return keep


def is_shipped(row: dict) -> bool:
    """The variant the appliance loads: its stage in variants.json says "(shipped)"."""
    return "(shipped)" in row.get("stage", "")


def plot(rows: list[dict], path: Path) -> None:
    """Latency (1 thread) and file size against accuracy, reader top, retriever bottom;
    the shipped variant is a star."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [k for k in ("reader", "retriever") if any(r["kind"] == k and r["score"] is not None for r in rows)]
    fig, axes = plt.subplots(len(kinds), 2, figsize=(12, 4.8 * len(kinds)), squeeze=False)
    for row_axes, kind in zip(axes, kinds):
        chosen = [r for r in rows if r["kind"] == kind and r["score"] is not None and r["exists"]]
        for ax, key, label in ((row_axes[0], "p50_1", "p50 latency, 256-token window, 1 thread (ms)"),
                               (row_axes[1], "bytes", "model file size (MB)")):
            pts = [(r[key] / (MB if key == "bytes" else 1), r["score"], r["name"], is_shipped(r))
                   for r in chosen if r[key] is not None]
            if not pts:
                continue
            front = set(pareto([(x, y) for x, y, _, _ in pts]))
            for i, (x, y, name, shipped) in enumerate(pts):
                ax.scatter(x, y, color="tab:red" if i in front else "tab:blue", s=160 if shipped else 40,
                           marker="*" if shipped else "o", zorder=3)
                ax.annotate(f"{name} (shipped)" if shipped else name, (x, y), fontsize=7, xytext=(4, 3),
                            textcoords="offset points", weight="bold" if shipped else "normal")
            fx = sorted((pts[i][0], pts[i][1]) for i in front)
            ax.plot([p[0] for p in fx], [p[1] for p in fx], color="tab:red", lw=1, ls="--", zorder=2)
            ax.set_xscale("log")
            ax.set_xlabel(label)
            ax.set_ylabel("F1 (dev-42)" if kind == "reader" else "dense R@5 % (dev-42)")
            ax.set_title(f"{kind}: red = Pareto front, star = shipped")
            ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="build_tools report", description=__doc__)
    p.add_argument("--variants", type=Path, default=DEFAULT_SPEC)
    p.add_argument("--data", type=Path, default=DEV42)
    p.add_argument("--limit", type=int, default=2000, help="reader questions evaluated (0 = all of dev-42)")
    p.add_argument("--retriever-limit", type=int, default=2000, help="retriever questions evaluated (0 = all)")
    p.add_argument("--evaluate", action="store_true", help="run missing evaluations (slow, one thread)")
    p.add_argument("--only", default="", help="comma-separated variant names to evaluate/report (default all)")
    p.add_argument("--bench", type=Path, default=PROJECT_ROOT / "build" / "compress" / "bench.json")
    p.add_argument("--cache", type=Path, default=PROJECT_ROOT / "build" / "compress" / "eval")
    p.add_argument("--root", type=Path, default=PROJECT_ROOT)
    p.add_argument("--out", type=Path, default=PROJECT_ROOT / "build" / "compress" / "report.md")
    p.add_argument("--png", type=Path, default=PROJECT_ROOT / "docs" / "compression-pareto.png")
    args = p.parse_args(argv)

    variants = load_spec(args.variants)
    if args.only:
        variants = [v for v in variants if v.name in args.only.split(",")]
    bench = json.loads(args.bench.read_text()) if args.bench.exists() else {}
    evals = {}
    for v in variants:
        limit = args.limit if v.kind == "reader" else args.retriever_limit
        if v.same_as:
            continue  # its ONNX export is parity-checked against it: that row's accuracy is its accuracy
        result = cached_evaluation(v, args.cache, args.data, limit, args.evaluate, args.root)
        if result:
            evals[v.name] = result
            print(json.dumps({"evaluated": v.name, **{k: result[k] for k in result if k in ("f1", "dense", "seconds")}}),
                  flush=True)
    rows = build_rows(variants, bench, evals, args.root)
    table = markdown(rows, args.data, args.limit, args.retriever_limit) + "\n" + targets(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table)
    (args.out.with_suffix(".json")).write_text(json.dumps(rows, indent=2) + "\n")
    plot(rows, args.png)
    print(table)


if __name__ == "__main__":
    main()
