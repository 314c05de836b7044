"""Benchmark results → ``<model>.json``, ``report.md`` and PNG plots (one job: presenting).

``report.md`` is rebuilt from every ``*.json`` in the target's results folder, so models measured
in separate runs end up in one table. The cross-processor table reads the sibling folders
(``x86/``, ``arm/``, ``cuda/``) and says "not measured" where a folder has no results: an
estimate never goes in a measured column.
"""

from __future__ import annotations

import json
import os

from rebirth_tvm.backend.measure import CATEGORIES

VARIANT_LABELS = {"original": "TVM original", "exact": "TVM exact", "reborn": "TVM reborn", "reborn_tucker": "TVM reborn+Tucker",
                  "ort_original": "ORT original", "ort_reborn": "ORT reborn"}
TARGET_FOLDERS = {"x86": "x86 (this machine)", "arm": "ARM (aarch64)", "cuda": "CUDA GPU"}
NOT_MEASURED = {"arm": "not measured: no board was given (--rpc-tracker); qemu timings are not device speed",
                "cuda": "not measured: no GPU was available to these runs"}


TVM_ORDER = ("original", "exact", "reborn", "reborn_tucker")


def write_model(result: dict, out_dir: str) -> str:
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{result['model']}.json")
    temporary = path + ".part"
    with open(temporary, "w") as f:
        json.dump(result, f, indent=1, sort_keys=False)
        f.write("\n")
    os.replace(temporary, path)
    return path


def load_results(out_dir: str) -> list[dict]:
    if not os.path.isdir(out_dir):
        return []
    results = []
    for name in sorted(os.listdir(out_dir)):
        if name.endswith(".json"):
            with open(os.path.join(out_dir, name)) as f:
                results.append(json.load(f))
    return results


def _ms(entry) -> str:
    if not entry:
        return "—"
    lat = entry["latency_ms"]
    return f"{lat['median']:.2f} ({lat['p10']:.2f}–{lat['p90']:.2f})"


def _x(value) -> str:
    return "—" if value is None else f"{value:.2f}×"


def _mib(value) -> str:
    return "—" if value is None else f"{value / 2**20:.1f}"


def model_line(result: dict) -> str:
    r = result["ratios"]
    v = result["variants"]
    parts = [f"{result['model']}: original {v['original']['latency_ms']['median']:.2f} ms",
             f"exact {v['exact']['latency_ms']['median']:.2f} ms ({_x(r['original_over_exact'])})"]
    if "reborn" in v:
        parts.append(f"reborn {v['reborn']['latency_ms']['median']:.2f} ms ({_x(r['original_over_reborn'])})")
    if "reborn_tucker" in v:
        parts.append(f"reborn+Tucker {v['reborn_tucker']['latency_ms']['median']:.2f} ms ({_x(r.get('original_over_reborn_tucker'))})")
    if "ort_original" in v:
        parts.append(f"ORT original {v['ort_original']['latency_ms']['median']:.2f} ms")
    return ", ".join(parts)


def markdown(results: list[dict], env: dict, plots: list[str]) -> str:
    lines = [
        f"# Benchmark: original vs exact vs reborn ({env['target'].get('kind')}, {env['cpu']}, {env['cores']} cores)",
        "",
        f"Measured {env['date']} with `python -m rebirth_tvm.bench`. TVM variants of a model get the same MetaSchedule budget, "
        "each in its own database (the table gives it per model; *untuned* means the project's CPU kernels without tuning: "
        "blocked-layout convs with a register-tiled template, parallel vectorised loops for the rest, on every core)."
        " onnxruntime: full graph optimisations, all cores. Latency: median (p10–p90) in ms over round-robin samples in one process.",
        f"Versions: {', '.join(f'{k} {v}' for k, v in env['versions'].items())}. fp32 matmul ceiling: "
        f"{env['matmul_peak']['gflops']:.0f} GFLOP/s ({env['matmul_peak']['method']}, {env['matmul_peak']['blas']}).",
        "",
        "## Latency",
        "",
        "| model | tuning trials per TVM variant | TVM original | TVM exact | TVM reborn | TVM reborn+Tucker | ORT original | ORT reborn | original ÷ exact | original ÷ reborn | original ÷ reborn+Tucker | ORT original ÷ TVM reborn | ORT original ÷ ORT reborn |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        v, q = r["variants"], r["ratios"]
        lines.append(f"| {r['model']} | {r['environment']['tune_trials'] or 'untuned'} | {_ms(v.get('original'))} | {_ms(v.get('exact'))} | {_ms(v.get('reborn'))} | "
                     f"{_ms(v.get('reborn_tucker'))} | {_ms(v.get('ort_original'))} | {_ms(v.get('ort_reborn'))} | {_x(q['original_over_exact'])} | "
                     f"{_x(q['original_over_reborn'])} | {_x(q.get('original_over_reborn_tucker'))} | {_x(q['ort_original_over_tvm_reborn'])} | {_x(q['ort_original_over_ort_reborn'])} |")
    lines += ["", "## Time per op category (share of kernel time, one inference)", "",
              "| model | variant | " + " | ".join(c for c in CATEGORIES if c != "vm") + " | non-tensor share | kernels ms |",
              "|---|---|" + "---|" * (len(CATEGORIES) - 1) + "---|---|"]
    for r in results:
        for variant in TVM_ORDER:
            b = r["variants"].get(variant, {}).get("breakdown")
            if b:
                lines.append(f"| {r['model']} | {variant} | " + " | ".join(f"{b['share'][c]:.1%}" for c in CATEGORIES if c != "vm")
                             + f" | **{b['non_tensor_share']:.1%}** | {b['kernel_ms']:.2f} |")
    lines += ["", "## Memory and compute", "",
              "| model | variant | weights MiB | planned activations MiB | peak RSS MiB (model's share) | GFLOPs | GFLOP/s | % of matmul ceiling |",
              "|---|---|---|---|---|---|---|---|"]
    peak = env["matmul_peak"]["gflops"]
    for r in results:
        for variant in TVM_ORDER:
            e = r["variants"].get(variant)
            if e:
                rss = f"{_mib(e.get('peak_rss_bytes'))} ({_mib(e.get('peak_rss_increase_bytes'))})"
                lines.append(f"| {r['model']} | {variant} | {_mib(e['weight_bytes'])} | {_mib(e['planned_activation_bytes'])} | {rss} | "
                             f"{e['flops'] / 1e9:.2f} | {e['gflops_per_second']:.1f} | {e['gflops_per_second'] / peak:.1%} |")
    reborn = [r for r in results if "rebirth" in r]
    if reborn:
        lines += ["", "## Reborn models: what was relearned and how close it stays", "",
                  "| model | relearned sites | refused | top-1 agreement | top-5 | relative logit error | calibration | relearn s |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in reborn:
            f = r["rebirth"]["fidelity"]
            lines.append(f"| {r['model']} | {r['rebirth']['relearned_sites']} | {r['rebirth']['refused_sites']} | "
                         f"{f.get('top1_agreement', float('nan')):.1%} | {f.get('top5_agreement', float('nan')):.1%} | "
                         f"{f.get('relative_logit_error', float('nan')):.3g} | {f['calibration']} | {f['relearn_seconds']} |")
    combined = [r for r in results if "reborn_tucker" in r["variants"]]
    if combined:
        # The paper's comparison shape: its fastest model (GoogLeNet reborn + Tucker) against
        # SqueezeNet and the original, on one machine.
        lines += ["", "## Reborn + Tucker against the compact models (the paper's comparison)", "",
                  "| model | variant | latency ms | vs this model's original | GFLOPs | weights MiB | relearned / decomposed sites | top-1 agreement (held out) |",
                  "|---|---|---|---|---|---|---|---|"]
        rows = [(r, "reborn_tucker") for r in combined] + [(r, v) for r in results for v in ("original", "reborn") if v in r["variants"]]
        for r, variant in sorted(rows, key=lambda rv: rv[0]["variants"][rv[1]]["latency_ms"]["median"]):
            e = r["variants"][variant]
            extra = r.get("rebirth_tucker") if variant == "reborn_tucker" else r.get("rebirth") if variant == "reborn" else None
            sites = f"{extra['relearned_sites']} / {extra.get('decomposed_sites', 0)}" if extra else ""
            agreement = f"{extra['fidelity'].get('top1_agreement', float('nan')):.1%}" if extra else ""
            lines.append(f"| {r['model']} | {VARIANT_LABELS[variant]} | {_ms(e)} | {_x(e.get('ratio_vs_original'))} | {e['flops'] / 1e9:.2f} | "
                         f"{_mib(e['weight_bytes'])} | {sites} | {agreement} |")
    lines += ["", "## Cross-processor", "", "| processor | status |", "|---|---|"]
    parent = os.path.dirname(env.get("_out_dir", "")) if env.get("_out_dir") else None
    for folder, label in TARGET_FOLDERS.items():
        measured = load_results(os.path.join(parent, folder)) if parent else []
        if measured:
            lines.append(f"| {label} | measured: " + "; ".join(model_line(m) for m in measured) + " |")
        else:
            lines.append(f"| {label} | {NOT_MEASURED.get(folder, 'not measured')} |")
    if plots:
        lines += ["", "## Plots", ""] + [f"![{os.path.splitext(p)[0]}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def plot(results: list[dict], out_dir: str) -> list[str]:
    """latency.png, breakdown.png, memory.png; returns their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    files = []
    models = [r["model"] for r in results]
    # The tuning budget belongs on the axis: untuned and tuned bars must not be read alike.
    labels = [f"{r['model']}\n{r['environment']['tune_trials']} trials" if r["environment"]["tune_trials"] else f"{r['model']}\nuntuned"
              for r in results]
    variants = [v for v in VARIANT_LABELS if any(v in r["variants"] for r in results)]
    fig, ax = plt.subplots(figsize=(max(6, 1.8 * len(models) + 2), 4))
    width = 0.8 / len(variants)
    for i, variant in enumerate(variants):
        medians = [r["variants"].get(variant, {}).get("latency_ms", {}).get("median", np.nan) for r in results]
        low = [m - r["variants"].get(variant, {}).get("latency_ms", {}).get("p10", m) for m, r in zip(medians, results)]
        high = [r["variants"].get(variant, {}).get("latency_ms", {}).get("p90", m) - m for m, r in zip(medians, results)]
        ax.bar(np.arange(len(models)) + i * width, medians, width, yerr=[low, high], label=VARIANT_LABELS[variant], capsize=2)
    ax.set_xticks(np.arange(len(models)) + width * (len(variants) - 1) / 2, labels)
    ax.set_yscale("log")
    files.append(_save(fig, ax, out_dir, "latency.png", "latency, ms (median, p10–p90)", "Latency per model and variant"))

    rows = [(r["model"], v, r["variants"][v]["breakdown"]) for r in results for v in ("original", "reborn")
            if "breakdown" in r["variants"].get(v, {})]
    if rows:
        fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(rows) + 2), 4))
        # Shares, as in the paper's figure (models differ too much in ms to share an axis);
        # the kernel time of each bar is written above it.
        bottom = np.zeros(len(rows))
        for category in [c for c in CATEGORIES if c != "vm"]:
            values = np.array([100 * b["share"][category] for _, _, b in rows])
            ax.bar(range(len(rows)), values, bottom=bottom, label=category)
            bottom += values
        for i, (_, _, b) in enumerate(rows):
            ax.text(i, 101, f"{b['kernel_ms']:.1f} ms\nnon-tensor {b['non_tensor_share']:.0%}", ha="center", va="bottom", fontsize=7)
        ax.set_ylim(0, 118)
        ax.set_xticks(range(len(rows)), [f"{m}\n{v}" for m, v, _ in rows], fontsize=8)
        files.append(_save(fig, ax, out_dir, "breakdown.png", "share of kernel time, % (one inference)",
                           "Time per op category, before and after rebirth", outside=True))

    fig, ax = plt.subplots(figsize=(max(6, 1.8 * len(models) + 2), 4))
    tvm_variants = [v for v in TVM_ORDER if any(v in r["variants"] for r in results)]
    width = 0.8 / len(tvm_variants)
    for i, variant in enumerate(tvm_variants):
        values = [r["variants"].get(variant, {}).get("planned_activation_bytes", np.nan) / 2**20 for r in results]
        ax.bar(np.arange(len(models)) + i * width, values, width, label=VARIANT_LABELS[variant])
    ax.set_xticks(np.arange(len(models)) + width * (len(tvm_variants) - 1) / 2, labels)
    files.append(_save(fig, ax, out_dir, "memory.png", "planned activation memory, MiB",
                       "Run-time activation memory (StaticPlanBlockMemory, fused)"))
    return files


def _save(fig, ax, out_dir: str, name: str, ylabel: str, title: str, outside: bool = False) -> str:
    import matplotlib.pyplot as plt

    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if outside:
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    else:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, name), dpi=110)
    plt.close(fig)
    return name


def write_summary(out_dir: str, env: dict) -> str:
    results = load_results(out_dir)
    plots = plot(results, out_dir) if results else []
    env = dict(results[-1]["environment"] if results else env, _out_dir=out_dir)
    path = os.path.join(out_dir, "report.md")
    with open(path + ".part", "w") as f:
        f.write(markdown(results, env, plots))
    os.replace(path + ".part", path)
    return path
