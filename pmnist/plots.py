"""Figures of the study, drawn with matplotlib's object API (Figure + Agg canvas, no pyplot state). The
plots stage writes results/figures/ whole (figures of removed runs vanish), and every PNG is byte-identical
across reruns (no software/date metadata, fixed jitter). One colour per run everywhere, fixed by run order."""
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pmnist.metrics import (HEADLINE, METRICS, average_accuracy, forgetting_per_task, headline, learned_nothing,
                            mean_ci)


def figure_paths(runs, pairs):
    """Figure files, relative to results/ (the report links these same names). pairs: the primary
    (run, control) pairs, the only ones that get a paired-difference figure (~25 runs would give ~75)."""
    return {
        "average_accuracy": "figures/average_accuracy.png",
        "forgetting": "figures/forgetting_per_task.png",
        "stability_plasticity": "figures/stability_plasticity.png",
        "matrix": {run: f"figures/accuracy_matrix_{run}.png" for run in runs},
        "diff": {(run, control): f"figures/paired_diff_{run}_vs_{control}.png" for run, control in pairs},
    }


def primary_pairs(stats):
    """Distinct (run, control) pairs of the primary family of results/stats.json, in order."""
    return list(dict.fromkeys((t["run"], t["control"]) for t in stats["tests"] if t["family"] == "primary"))


def run_colors(runs):
    """run -> colour, by position in the params' run order (tab10, then tab20 beyond 10 runs)."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(runs) <= 10 else "tab20"]
    return {run: cmap(i % cmap.N) for i, run in enumerate(runs)}


def _save(fig, path, dpi):
    FigureCanvasAgg(fig)
    # metadata: no "Software" (matplotlib version) key, so a rerun with another version is byte-identical too
    fig.savefig(path, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})


def _legend(ax, n):
    """Beside the axes, not over the data: ~25 runs would cover it."""
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), ncol=1 if n <= 16 else 2)


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
    _legend(ax, len(acc))
    _save(fig, path, dpi)


def plot_forgetting(acc, colors, path, dpi):
    """acc: run -> R [S, T, T]. Final forgetting f_j of each task j < T-1: bars = mean, dots = seeds."""
    n_bars = len(acc) * (next(iter(acc.values())).shape[-1] - 1)
    fig = Figure(layout="constrained", figsize=(max(7.5, 3 + 0.06 * n_bars), 4.2))  # room for ~25 runs' bars
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
        _legend(ax, len(acc))
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
           title=f"{run}: accuracy (%), mean over {R.shape[0]} seed(s)")
    fig.colorbar(im, ax=ax, label="accuracy (%)", shrink=0.8)
    _save(fig, path, dpi)


def plot_paired_difference(run, control, diffs, tests, path, dpi):
    """diffs: metric -> per-seed run - control; tests: metric -> the stats.json test of that pair (or None).
    The interval drawn is the paired t-interval, the one beside the test in stats.json."""
    fig = Figure(layout="constrained", figsize=(3.0 * len(diffs), 3.8))
    axes = fig.subplots(1, len(diffs), squeeze=False)[0]
    rng = np.random.default_rng(0)
    for ax, (metric, d) in zip(axes, diffs.items()):
        d = d[~np.isnan(d)]
        ax.axhline(0, color="k", lw=0.8)
        ax.scatter(rng.uniform(-0.15, 0.15, len(d)), d, s=14, color="tab:gray", label="seeds")
        if len(d):
            mean, _, low, high = mean_ci(d)
            yerr = None if np.isnan(low) else [[mean - low], [high - mean]]
            ax.errorbar([0.45], [mean], yerr=yerr, fmt="D", color="k", capsize=5, label="mean, 95% t-CI")
        label, higher_better = METRICS[metric]
        t = tests.get(metric)
        p = "not tested" if t is None or t["p_holm"] is None else f"{t['family']}: p_holm = {t['p_holm']:.2g}"
        ax.set_title(f"{label} ({'higher' if higher_better else 'lower'} is better)\n{p}", fontsize=9)
        ax.set_xticks([])
        ax.set_xlim(-0.5, 0.8)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("difference (percentage points)")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{run} minus {control}, paired by seed")
    _save(fig, path, dpi)


def plot_stability_plasticity(values, groups, colors, path, dpi, dead=()):
    """Forgetting (y) against learning accuracy (x), one point per run with 95% t-CI bars on both axes,
    labelled; each group (params plots.tradeoff) joined by a line in its listed order (e.g. a period sweep).
    values: run -> metric -> per-seed values; dead: runs left out because a seed learned nothing (their
    zero forgetting would sit in the "best" corner and squash the axes)."""
    fig = Figure(layout="constrained", figsize=(7.5, 5.5))
    ax = fig.add_subplot()
    centre = {}
    if dead:
        fig.supxlabel(f"not shown, learned nothing: {', '.join(dead)}", fontsize=7)
    for run, v in values.items():
        if run in dead:
            continue
        (mx, _, lx, hx), (my, _, ly, hy) = mean_ci(v["learning_acc_pct"]), mean_ci(v["forgetting_pct"])
        if np.isnan(mx) or np.isnan(my):
            continue  # forgetting is undefined with 1 task
        centre[run] = (mx, my)
        err = lambda m, lo, hi: None if np.isnan(lo) else [[m - lo], [hi - m]]  # noqa: E731
        ax.errorbar([mx], [my], xerr=err(mx, lx, hx), yerr=err(my, ly, hy), fmt="o", ms=5, capsize=3,
                    color=colors[run], zorder=3)
        ax.annotate(run, (mx, my), xytext=(4, 4), textcoords="offset points", fontsize=7)
    styles = ["-", "--", ":", "-."]
    for i, (group, runs) in enumerate(groups.items()):
        pts = [centre[r] for r in runs if r in centre]
        if len(pts) > 1:
            ax.plot(*zip(*pts), styles[i % len(styles)], color="0.35", lw=1, zorder=2, label=group)
    if not centre:
        ax.text(0.5, 0.5, "forgetting is undefined with 1 task", ha="center", transform=ax.transAxes)
    if groups and centre:
        ax.legend(fontsize=8, title="sweeps (in listed order)", title_fontsize=8)
    ax.set(xlabel="learning accuracy: mean accuracy on each task right after training it (%)",
           ylabel="average forgetting (percentage points)",
           title="Stability vs plasticity (mean, 95% CI over seeds; lower right is better)")
    ax.grid(alpha=0.3)
    _save(fig, path, dpi)


def make_figures(data, stats, out_dir, runs, tradeoff, dpi):
    """All figures into out_dir (a fresh directory standing for results/figures/).
    data: load_runs output; stats: results/stats.json content; tradeoff: params plots.tradeoff.
    Returns the paths written, relative to results/."""
    colors = run_colors(runs)
    acc = {run: data[run]["accuracy"] for run in runs}
    values = {run: headline(data[run]["accuracy"], data[run]["untrained_accuracy"]) for run in runs}
    pairs = primary_pairs(stats)
    paths = figure_paths(runs, pairs)
    out = lambda rel: out_dir / rel.removeprefix("figures/")  # noqa: E731
    plot_average_accuracy(acc, colors, out(paths["average_accuracy"]), dpi)
    plot_forgetting(acc, colors, out(paths["forgetting"]), dpi)
    dead = [run for run in runs if learned_nothing(data[run]["accuracy"]).any()]
    plot_stability_plasticity(values, tradeoff, colors, out(paths["stability_plasticity"]), dpi, dead)
    for run in runs:
        plot_accuracy_matrix(run, acc[run], out(paths["matrix"][run]), dpi)
    for run, control in pairs:
        tests = {t["metric"]: t for t in stats["tests"]
                 if t["kind"] == "comparison" and (t["run"], t["control"]) in ((run, control), (control, run))}
        # paired by seed value, on the seeds both runs trained (runs may train different numbers)
        seeds_r, seeds_c = data[run]["seed"].tolist(), data[control]["seed"].tolist()
        both = [s for s in seeds_r if s in seeds_c]
        ir, ic = [seeds_r.index(s) for s in both], [seeds_c.index(s) for s in both]
        diffs = {m: values[run][m][ir] - values[control][m][ic] for m in HEADLINE}
        plot_paired_difference(run, control, diffs, tests, out(paths["diff"][run, control]), dpi)
    return [paths["average_accuracy"], paths["forgetting"], paths["stability_plasticity"],
            *paths["matrix"].values(), *paths["diff"].values()]
