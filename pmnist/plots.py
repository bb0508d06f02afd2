"""Figures of the study, drawn with matplotlib's object API (Figure + Agg canvas, no pyplot state), each
PNG written atomically. One colour per run everywhere, fixed by the run order in params."""
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pmnist.io import atomic_path
from pmnist.metrics import METRICS, average_accuracy, forgetting_per_task, mean_ci


def figure_paths(runs, pairs):
    """Figure files, relative to results/ (the report links these same names)."""
    return {
        "average_accuracy": "figures/average_accuracy.png",
        "forgetting": "figures/forgetting_per_task.png",
        "matrix": {run: f"figures/accuracy_matrix_{run}.png" for run in runs},
        "diff": {(run, control): f"figures/paired_diff_{run}_vs_{control}.png" for run, control in pairs},
    }


def run_colors(runs):
    """run -> colour, by position in the params' run order (tab10, then tab20 beyond 10 runs)."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(runs) <= 10 else "tab20"]
    return {run: cmap(i % cmap.N) for i, run in enumerate(runs)}


def _save(fig, path, dpi):
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")


def plot_average_accuracy(acc, colors, path, dpi):
    """acc: run -> R [S, T, T]. Mean over seeds of A_i (average accuracy after task i) with a 95% t-band."""
    fig = Figure(layout="constrained", figsize=(6.5, 4.2))
    ax = fig.add_subplot()
    for run, R in acc.items():
        mean, _, low, high = mean_ci(100 * average_accuracy(R))
        x = np.arange(1, len(mean) + 1)
        ax.plot(x, mean, "o-", color=colors[run], label=run, ms=4)
        ax.fill_between(x, low, high, color=colors[run], alpha=0.2, lw=0)
    ax.set(xlabel="tasks trained", ylabel="average accuracy on tasks seen (%)",
           title="Average accuracy over tasks (mean, 95% CI over seeds)")
    ax.set_xticks(x)
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path, dpi)


def plot_forgetting(acc, colors, path, dpi):
    """acc: run -> R [S, T, T]. Final forgetting f_j of each task j < T-1: bars = mean, dots = seeds."""
    fig = Figure(layout="constrained", figsize=(7.5, 4.2))
    ax = fig.add_subplot()
    width = 0.8 / len(acc)
    rng = np.random.default_rng(0)  # fixed jitter: identical inputs give identical PNGs
    for i, (run, R) in enumerate(acc.items()):
        f = 100 * forgetting_per_task(R)  # [S, T-1]
        x = np.arange(1, f.shape[1] + 1) + (i - (len(acc) - 1) / 2) * width
        ax.bar(x, f.mean(0), width, color=colors[run], alpha=0.6, label=run)
        jitter = rng.uniform(-width / 4, width / 4, f.shape)
        ax.scatter((x + jitter).ravel(), f.ravel(), s=8, color=colors[run], edgecolor="k", lw=0.3, zorder=3)
    if f.shape[1] == 0:
        ax.text(0.5, 0.5, "forgetting is undefined with 1 task", ha="center", transform=ax.transAxes)
        ax.set(xticks=[], yticks=[])
    else:
        ax.set_xticks(np.arange(1, f.shape[1] + 1))
        ax.legend()
    ax.axhline(0, color="k", lw=0.8)
    ax.set(xlabel="task", ylabel="final forgetting (percentage points)",
           title="Final forgetting per task (bars: mean; dots: seeds)")
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path, dpi)


def plot_accuracy_matrix(run, R, path, dpi):
    """Mean over seeds of R [S, T, T], in %, annotated: row = after training task i, column = task j."""
    M = 100 * R.mean(0)
    T = M.shape[0]
    fig = Figure(layout="constrained", figsize=(1.0 + 0.55 * T, 0.8 + 0.5 * T))
    ax = fig.add_subplot()
    im = ax.imshow(M, vmin=0, vmax=100, cmap="viridis")
    for i in range(T):
        for j in range(T):
            ax.text(j, i, f"{M[i, j]:.0f}", ha="center", va="center", fontsize=7,
                    color="k" if M[i, j] > 60 else "w")
    ticks = np.arange(T)
    ax.set_xticks(ticks, ticks + 1)
    ax.set_yticks(ticks, ticks + 1)
    ax.set(xlabel="evaluated on task", ylabel="after training task",
           title=f"{run}: test accuracy (%), mean over {R.shape[0]} seed(s)")
    fig.colorbar(im, ax=ax, label="accuracy (%)", shrink=0.8)
    _save(fig, path, dpi)


def plot_paired_difference(run, control, diffs, results, path, dpi):
    """diffs: metric -> per-seed run - control; results: metric -> stats.json entry (mean, CI, p_holm)."""
    fig = Figure(layout="constrained", figsize=(3.0 * len(diffs), 3.8))
    axes = fig.subplots(1, len(diffs), squeeze=False)[0]
    rng = np.random.default_rng(0)
    for ax, (metric, d) in zip(axes, diffs.items()):
        res = results[metric]
        ax.axhline(0, color="k", lw=0.8)
        ax.scatter(rng.uniform(-0.15, 0.15, len(d)), d, s=14, color="tab:gray", label="seeds")
        if res.get("mean_diff") is not None:
            low, high = res.get("ci95_low"), res.get("ci95_high")
            yerr = None if low is None else [[res["mean_diff"] - low], [high - res["mean_diff"]]]
            ax.errorbar([0.45], [res["mean_diff"]], yerr=yerr, fmt="D", color="k", capsize=5,
                        label="mean, 95% CI")
        label, higher_better = METRICS[metric]
        p = res.get("p_holm")
        ax.set_title(f"{label} ({'higher' if higher_better else 'lower'} is better)\n"
                     f"p_holm = {'n/a' if p is None else f'{p:.2g}'}", fontsize=9)
        ax.set_xticks([])
        ax.set_xlim(-0.5, 0.8)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("difference (percentage points)")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{run} minus {control}, paired by seed")
    _save(fig, path, dpi)


def make_figures(acc, values, stats, results_dir, runs, dpi):
    """All figures: acc run -> R [S, T, T] (load_runs), values run -> metric -> per-seed (load_summary),
    stats = results/stats.json content. Returns the paths written."""
    colors = run_colors(runs)
    acc = {run: acc[run] for run in runs}
    pairs = [(c["run"], c["control"]) for c in stats["comparisons"]]
    paths = figure_paths(runs, pairs)
    out = lambda rel: Path(results_dir) / rel  # noqa: E731
    plot_average_accuracy(acc, colors, out(paths["average_accuracy"]), dpi)
    plot_forgetting(acc, colors, out(paths["forgetting"]), dpi)
    for run in runs:
        plot_accuracy_matrix(run, acc[run], out(paths["matrix"][run]), dpi)
    for c in stats["comparisons"]:
        run, control = c["run"], c["control"]
        diffs = {m: values[run][m] - values[control][m] for m in c["metrics"]}
        plot_paired_difference(run, control, diffs, c["metrics"], out(paths["diff"][run, control]), dpi)
    return [paths["average_accuracy"], paths["forgetting"], *paths["matrix"].values(), *paths["diff"].values()]
