"""Figures of the study, drawn with matplotlib's object API (Figure + Agg canvas, no pyplot state). The
plots stage writes results/figures/ whole (figures of removed runs vanish), and every PNG is byte-identical
across reruns (no software/date metadata, fixed jitter).

Everything a figure groups or joins is derived from the params' runs (model, optimizer, method, lr,
periods, lr multipliers) and results/stats.json (the declared primary and secondary pairs), never from
run names, so a new run needs no code: one distinct colour per run (however many), curves as small
multiples by role (primary runs, schedule controls, methods, optimizers, models), each run against its
same-lr control in the summary forest plot, and each sweep joined from the plain run at its own lr."""
import math

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.patches import Rectangle

from pmnist.metrics import (HEADLINE, METRICS, average_accuracy, forgetting_per_task, headline, learned_nothing,
                            mean_ci)

# Sections of the study, in display order: a run's role, derived from its settings (see `section`).
PRIMARY = "primary hypotheses"
SECTIONS = (PRIMARY, "CMS schedules and their controls", "continual-learning methods", "optimizers", "models")
PANEL_MAX = 8            # runs per small-multiple panel; a larger section is split over several panels
LABEL_PT = 7             # label font size (points) in the stability-plasticity figure


def figure_paths(runs, pairs):
    """Figure files, relative to results/ (the report links these same names). pairs: the primary
    (run, control) pairs, the only ones that get a paired-difference figure of their own."""
    return {
        "forest": "figures/paired_differences.png",
        "average_accuracy": "figures/average_accuracy.png",
        "forgetting": "figures/forgetting_per_task.png",
        "stability_plasticity": "figures/stability_plasticity.png",
        "matrix": {run: f"figures/accuracy_matrix_{run}.png" for run in runs},
        "diff": {(run, control): f"figures/paired_diff_{run}_vs_{control}.png" for run, control in pairs},
    }


def primary_pairs(stats):
    """Distinct (run, control) pairs of the primary family of results/stats.json, in order."""
    return list(dict.fromkeys((t["run"], t["control"]) for t in stats["tests"] if t["family"] == "primary"))


# ---- the study's structure, from the runs' settings ------------------------------------------------
def norm(cfg):
    """A run's settings with the config's defaults filled in (the tests pass bare run dicts)."""
    n = len(cfg.get("periods") or cfg.get("lr_multipliers") or [])
    return {"model": cfg.get("model"), "model_args": cfg.get("model_args") or {},
            "optimizer": cfg.get("optimizer"), "optimizer_args": cfg.get("optimizer_args") or {},
            "method": cfg.get("method") or "none", "method_args": cfg.get("method_args") or {},
            "batch_size": cfg.get("batch_size"), "lr": float(cfg["lr"]),
            "periods": list(cfg.get("periods") or [1] * n),
            "lr_multipliers": [float(m) for m in cfg.get("lr_multipliers") or [1.0] * n],
            "accumulate": cfg.get("accumulate") or "sum", "lr_scale": cfg.get("lr_scale") or "none"}


def has_schedule(cfg):
    """Levels that update at different periods or lrs (a CMS schedule or one of its lr controls)."""
    c = norm(cfg)
    return any(p != 1 for p in c["periods"]) or any(m != 1 for m in c["lr_multipliers"])


def is_plain(cfg):
    """Every level every step at the base lr, no continual-learning method: a baseline."""
    return not has_schedule(cfg) and norm(cfg)["method"] == "none"


def _key(cfg, drop=()):
    c = norm(cfg)
    return repr([(k, c[k]) for k in sorted(c) if k not in drop])


SCHEDULE = ("periods", "lr_multipliers", "accumulate", "lr_scale")


def lr_families(runs):
    """Runs identical but for their lr, at two lrs or more: name -> [runs by rising lr]. The family is
    named after its first run in params order."""
    by = {}
    for run, cfg in runs.items():
        by.setdefault(_key(cfg, ("lr",)), []).append(run)
    return {members[0]: sorted(members, key=lambda r: (float(runs[r]["lr"]), list(runs).index(r)))
            for members in by.values() if len({float(runs[r]["lr"]) for r in members}) > 1}


def plain_partner(run, runs):
    """The baseline at `run`'s lr: the first plain run with the same model, optimizer, their args, batch
    size and lr (None if there is none, or `run` is plain itself)."""
    if is_plain(runs[run]):
        return None
    want = _key(runs[run], (*SCHEDULE, "method", "method_args"))
    for other, cfg in runs.items():
        if other != run and is_plain(cfg) and _key(cfg, (*SCHEDULE, "method", "method_args")) == want:
            return other
    return None


def home(runs, stats):
    """The study's reference run: the control of the first primary test, else the first run."""
    pairs = primary_pairs(stats)
    return pairs[0][1] if pairs and pairs[0][1] in runs else next(iter(runs))


def section(run, runs, ref):
    """A run's role, from its settings against the reference run's: its method, model, optimizer."""
    c, h = norm(runs[run]), norm(runs[ref])
    if c["method"] != "none":
        return SECTIONS[2]
    if (c["model"], c["model_args"]) != (h["model"], h["model_args"]):
        return SECTIONS[4]
    if (c["optimizer"], c["optimizer_args"]) != (h["optimizer"], h["optimizer_args"]):
        return SECTIONS[3]
    return SECTIONS[1]


def run_groups(runs, stats):
    """Panels of runs, in display order: the primary runs, then each section (params order), a section of
    more than PANEL_MAX runs split evenly. -> [(title, [runs])]"""
    ref = home(runs, stats)
    prim = [r for r in dict.fromkeys(r for pair in primary_pairs(stats) for r in pair) if r in runs]
    groups = {PRIMARY: prim} if prim else {}
    for run in runs:
        if run not in prim:
            groups.setdefault(section(run, runs, ref), []).append(run)
    out = []
    for title in SECTIONS:
        members = groups.get(title, [])
        k = math.ceil(len(members) / PANEL_MAX)
        for i in range(k):
            chunk = members[i * len(members) // k:(i + 1) * len(members) // k]
            out.append((title + (f" ({i + 1}/{k})" if k > 1 else ""), chunk))
    return out


def _same_lr(a, b, runs):
    return math.isclose(float(runs[a]["lr"]), float(runs[b]["lr"]), rel_tol=1e-9)


def forest_rows(runs, stats):
    """The rows of the summary forest plot: every primary pair (marked), then every run against its same-lr
    control: the declared pairs of results/stats.json whose runs share an lr, else the baseline at the
    run's lr (plain_partner). -> (rows, uncovered): rows = [{run, control, section, primary, declared}],
    uncovered = runs in no row (no same-lr control)."""
    tested = list(dict.fromkeys((t["run"], t["control"]) for t in stats["tests"] if t["kind"] == "comparison"
                                and t["run"] in runs and t["control"] in runs))
    ref = home(runs, stats)
    rows = [{"run": r, "control": c, "section": PRIMARY, "primary": True, "declared": True}
            for r, c in primary_pairs(stats) if r in runs and c in runs]
    seen = {(r["run"], r["control"]) for r in rows}
    covered = {r["run"] for r in rows if _same_lr(r["run"], r["control"], runs)}
    for run in runs:
        same = [(a, b) for a, b in tested if a == run and _same_lr(a, b, runs) and (a, b) not in seen]
        if not same and run not in covered and plain_partner(run, runs):
            same = [(run, plain_partner(run, runs))]
        for a, b in same:
            seen.add((a, b))
            rows.append({"run": a, "control": b, "section": section(a, runs, ref), "primary": False,
                         "declared": (a, b) in tested or (b, a) in tested})
    order = {s: i for i, s in enumerate(SECTIONS)}
    rows = sorted(rows, key=lambda r: order[r["section"]])  # stable: params order within a section
    used = {name for r in rows for name in (r["run"], r["control"])}
    return rows, [run for run in runs if run not in used]


def find_test(stats, a, b, metric):
    """The stats.json comparison of a and b (either order) on metric, with sign for a - b, or (None, 1)."""
    for t in stats["tests"]:
        if t["kind"] == "comparison" and t["metric"] == metric and {t["run"], t["control"]} == {a, b}:
            return t, (1 if t["run"] == a else -1)
    return None, 1


# ---- colours ----------------------------------------------------------------------------------------
def _lab(rgb):
    """sRGB in [0, 1] [..., 3] -> CIELAB (D65)."""
    rgb = np.asarray(rgb, dtype=np.float64)
    lin = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = lin @ np.array([[0.4124, 0.2126, 0.0193], [0.3576, 0.7152, 0.1192], [0.1805, 0.0722, 0.9505]])
    xyz /= np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def distinct_colors(n):
    """n colours, each as far (CIELAB) from the ones before as possible: tab10 first (minus its grey, kept
    for references), then greedily the farthest of an sRGB grid, leaving out light and greyish colours."""
    from matplotlib import colormaps

    tab = [colormaps["tab10"](i)[:3] for i in range(10) if i != 7]
    g = np.linspace(0, 1, 12)
    grid = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    lab = _lab(grid)
    ok = (lab[:, 0] > 25) & (lab[:, 0] < 80) & (np.hypot(lab[:, 1], lab[:, 2]) > 25)
    grid, lab = grid[ok], lab[ok]
    chosen = [tuple(c) for c in tab[:n]]
    dist = np.min(np.linalg.norm(lab[:, None] - _lab(np.array(chosen))[None], axis=-1), axis=1) if chosen else None
    while len(chosen) < n:
        i = int(np.argmax(dist))
        chosen.append(tuple(grid[i]))
        dist = np.minimum(dist, np.linalg.norm(lab - lab[i], axis=-1))
    return chosen


def run_colors(runs, stats=None):
    """run -> colour, one distinct colour per run: the primary runs take the first (tab10) colours, the
    others follow in params order."""
    order = list(dict.fromkeys([*(r for pair in primary_pairs(stats) for r in pair if r in runs), *runs])) \
        if stats else list(runs)
    return dict(zip(order, distinct_colors(len(order))))


def _save(fig, path, dpi):
    FigureCanvasAgg(fig)
    # metadata: no "Software" (matplotlib version) key, so a rerun with another version is byte-identical too
    fig.savefig(path, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})


# ---- curves as small multiples ------------------------------------------------------------------------
def _panels(groups, ncols=3, height=2.9, width=4.0):
    nrows = math.ceil(len(groups) / ncols)
    ncols = min(ncols, len(groups))
    fig = Figure(layout="constrained", figsize=(width * ncols, height * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True)
    for ax in axes.ravel()[len(groups):]:
        ax.set_visible(False)
    return fig, axes.ravel()[:len(groups)]


def plot_curves(series, groups, colors, ref, path, dpi, ylabel, title, xlabel="tasks trained"):
    """series: run -> (x, mean, low, high); one panel per group, each also showing the reference run (thin,
    dashed) so every panel reads against the same baseline."""
    fig, axes = _panels(groups)
    for ax, (name, members) in zip(axes, groups):
        shown = [*members, *([ref] if ref not in members and ref in series else [])]
        for run in shown:
            x, mean, low, high = series[run]
            is_ref = run == ref and run not in members
            ax.plot(x, mean, "--" if is_ref else "o-", color=colors[run], lw=1 if is_ref else 1.5, ms=3,
                    label=f"{run} (reference)" if is_ref else run, zorder=2 if is_ref else 3)
            if not is_ref and not np.isnan(low).all():
                ax.fill_between(x, low, high, color=colors[run], alpha=0.15, lw=0)
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="best", ncol=1 + (len(shown) > 5))
        ax.set_xticks(x)
    for ax in axes:
        ax.tick_params(labelsize=7)
    fig.supxlabel(xlabel, fontsize=9)
    fig.supylabel(ylabel, fontsize=9)
    fig.suptitle(title, fontsize=10)
    _save(fig, path, dpi)


# ---- the summary forest plot ----------------------------------------------------------------------------
def _paired(values, seeds, a, b, metric):
    """Per-seed a - b on the seeds both trained, by seed value."""
    sa, sb = seeds[a].tolist(), seeds[b].tolist()
    both = [s for s in sa if s in sb]
    d = values[a][metric][[sa.index(s) for s in both]] - values[b][metric][[sb.index(s) for s in both]]
    return d[~np.isnan(d)]


def plot_forest(rows, values, seeds, stats, colors, path, dpi, uncovered=()):
    """Paired differences run - control (mean, 95% t-interval over the seeds both trained), forgetting and
    final accuracy side by side, one row per forest_rows() row, under section headers. Filled marker: the
    test in stats.json is significant after Holm in its family; hollow: tested, not significant; grey
    square: a same-lr pair nobody declared (shown, not tested). Primary pairs are starred."""
    alpha = stats["alpha"]
    lines, y = [], 0
    for i, r in enumerate(rows):
        if i == 0 or r["section"] != rows[i - 1]["section"]:
            lines.append(("header", r["section"], y))
            y += 1
        lines.append(("row", r, y))
        y += 1
    metrics = ["forgetting_pct", "acc_pct"]
    height = 1.5 + 0.24 * max(y, 4)
    fig = Figure(figsize=(10.5, height))
    fig.subplots_adjust(left=0.34, right=0.98, top=1 - 0.85 / height, bottom=0.75 / height, wspace=0.08)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, metric in zip(axes, metrics):
        label, higher_better = METRICS[metric]
        ax.axvline(0, color="k", lw=0.8)
        for kind, r, yy in lines:
            if kind == "header":
                ax.axhspan(yy - 0.5, yy + 0.5, color="0.92", lw=0, zorder=0)
                continue
            d = _paired(values, seeds, r["run"], r["control"], metric)
            if not len(d):
                continue
            mean, _, low, high = mean_ci(d)
            t, _ = find_test(stats, r["run"], r["control"], metric)
            col = colors[r["run"]]
            if t is None or t.get("p_holm") is None:
                face, marker, col = "white", "s", "0.45"
            else:
                face, marker = (col if t["p_holm"] < alpha else "white"), ("*" if r["primary"] else "o")
            xerr = None if np.isnan(low) else [[mean - low], [high - mean]]
            ax.errorbar([mean], [yy], xerr=xerr, fmt=marker, ms=9 if marker == "*" else 5, color=col,
                        mfc=face, mec=col, capsize=2, lw=1.2, zorder=3)
        better = "lower" if not higher_better else "higher"
        ax.set_title(f"{label}: run − control (points)\n{better} is better", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("← run forgets less" if not higher_better else "run more accurate →", fontsize=8, color="0.3")
    ticks = [yy for _, _, yy in lines]
    names = []
    for kind, r, yy in lines:
        if kind == "header":
            names.append(r.upper())
        else:
            names.append(f"{'★ ' if r['primary'] else ''}{r['run']} − {r['control']}")
    axes[0].set_yticks(ticks, names, fontsize=7)
    for tick, (kind, _, _) in zip(axes[0].get_yticklabels(), lines):
        if kind == "header":
            tick.set_fontweight("bold")
            tick.set_fontsize(7)
    axes[0].set_ylim(y - 0.5, -0.5)
    note = (f"★ primary hypothesis; filled: significant after Holm in its family (alpha {alpha:g}); hollow: not "
            f"significant; grey square: same-lr pair not in stats.json (not tested). Mean and 95% t-interval of "
            f"the per-seed differences, paired on the seeds both runs trained.")
    if uncovered:
        note += f"\nNo same-lr control: {', '.join(uncovered)}."
    fig.text(0.01, 0.1 / height, note, fontsize=6.5, va="bottom", ha="left", color="0.25", wrap=True)
    fig.suptitle("Each run against its same-lr control, paired by seed", fontsize=11, y=1 - 0.12 / height)
    _save(fig, path, dpi)


# ---- accuracy matrices and the primary pairs' paired differences ----------------------------------------
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


# ---- stability vs plasticity ----------------------------------------------------------------------------
def sweep_lines(tradeoff, runs):
    """params plots.tradeoff with each sweep joined from the baseline at its own lr: a plain member whose lr
    differs from the lr its scheduled members share is replaced by their plain_partner (derived by lr and
    settings, not by name); a sweep without any plain member starts from that partner."""
    out = {}
    for group, members in tradeoff.items():
        members = [m for m in members if m in runs]
        sched = [m for m in members if not is_plain(runs[m])]
        lrs = {float(runs[m]["lr"]) for m in sched}
        partner = plain_partner(sched[0], runs) if len(lrs) == 1 else None
        if partner is None:
            out[group] = members
            continue
        line = [partner if is_plain(runs[m]) and not _same_lr(m, sched[0], runs) else m for m in members]
        if not any(is_plain(runs[m]) for m in members):
            line = [partner, *line]
        out[group] = list(dict.fromkeys(line))
    return out


def _place_labels(ax, fig, points, dpi, avoid=()):
    """Label each point (name -> (x, y) in data) without overlaps: for each label, in order, the first of
    candidate offsets on rings of growing radius whose box overlaps no placed label, no point and stays
    inside the axes; a label placed away from its point gets a thin leader line. Deterministic. Returns the
    labels' boxes in display pixels (x0, y0, x1, y1)."""
    renderer = FigureCanvasAgg(fig).get_renderer()
    font = FontProperties(size=LABEL_PT)
    box = ax.get_window_extent(renderer)
    disp = {name: ax.transData.transform(xy) for name, xy in points.items()}
    obstacles = [(x - 4, y - 4, x + 4, y + 4) for x, y in [*disp.values(), *(ax.transData.transform(a) for a in avoid)]]
    placed = []
    px = dpi / 72
    angles = np.deg2rad([45, 135, -45, -135, 0, 180, 90, -90, 22.5, 157.5, -22.5, -157.5, 67.5, 112.5, -67.5, -112.5])
    radii = [5, 9, 14, 20, 28, 38, 50, 64, 80, 100, 125]

    def overlap(a, b):
        return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))

    for name, (x, y) in disp.items():
        w, h, _ = renderer.get_text_width_height_descent(name, font, ismath=False)
        best = None
        for r in radii:
            for a in angles:
                dx, dy = r * px * math.cos(a), r * px * math.sin(a)
                ha = "left" if dx > 1e-6 else "right" if dx < -1e-6 else "center"
                va = "bottom" if dy > 1e-6 else "top" if dy < -1e-6 else "center"
                x0 = x + dx - (0 if ha == "left" else w if ha == "right" else w / 2)
                y0 = y + dy - (0 if va == "bottom" else h if va == "top" else h / 2)
                b = (x0 - 1, y0 - 1, x0 + w + 1, y0 + h + 1)
                inside = b[0] >= box.x0 and b[2] <= box.x1 and b[1] >= box.y0 and b[3] <= box.y1
                cost = sum(overlap(b, o) for o in [*placed, *obstacles]) + (0 if inside else 1e6)
                if best is None or cost < best[0]:
                    best = (cost, dx, dy, ha, va, b, r)
                if cost == 0:
                    break
            if best[0] == 0:
                break
        _, dx, dy, ha, va, b, r = best
        placed.append(b)
        ax.annotate(name, points[name], xytext=(dx / px, dy / px), textcoords="offset points", ha=ha, va=va,
                    fontsize=LABEL_PT, zorder=5,
                    arrowprops=dict(arrowstyle="-", lw=0.5, color="0.5", shrinkA=0, shrinkB=2) if r > 9 else None)
    return placed


def _zoom_box(centre, cis, focus):
    """(x0, x1, y0, y1) around the focus runs' points and CIs, padded; None when it would hold every point."""
    pts = [r for r in focus if r in centre]
    if len(pts) < 2:
        return None
    xs = [v for r in pts for v in (cis[r][0], cis[r][1])]
    ys = [v for r in pts for v in (cis[r][2], cis[r][3])]
    padx, pady = 0.12 * (max(xs) - min(xs) or 1), 0.12 * (max(ys) - min(ys) or 1)
    box = (min(xs) - padx, max(xs) + padx, min(ys) - pady, max(ys) + pady)
    inside = [r for r, (x, y) in centre.items() if box[0] <= x <= box[1] and box[2] <= y <= box[3]]
    return None if len(inside) == len(centre) else box


def plot_stability_plasticity(values, runs, tradeoff, colors, ref, path, dpi, dead=(), focus=()):
    """Forgetting (y) against learning accuracy (x), one point per run with 95% t-CI bars on both axes,
    labelled without overlaps. Lines: each lr family (runs identical but for their lr, by rising lr: the
    baseline's lr trade-off among them) and each sweep of params plots.tradeoff, joined from the baseline at
    the sweep's own lr (sweep_lines). When the focus runs (the primary runs, their lr families and sweeps)
    sit in a small part of the plane, a second panel zooms on them. values: run -> metric -> per-seed
    values; dead: runs left out because a seed learned nothing (their zero forgetting would sit in the
    "best" corner and squash the axes)."""
    centre, cis = {}, {}
    for run, v in values.items():
        if run in dead:
            continue
        (mx, _, lx, hx), (my, _, ly, hy) = mean_ci(v["learning_acc_pct"]), mean_ci(v["forgetting_pct"])
        if np.isnan(mx) or np.isnan(my):
            continue  # forgetting is undefined with 1 task
        centre[run] = (float(mx), float(my))
        cis[run] = tuple(float(m if np.isnan(b) else b) for m, b in ((mx, lx), (mx, hx), (my, ly), (my, hy)))
    families = {name: [r for r in members if r in centre] for name, members in lr_families(runs).items()}
    sweeps = {g: [r for r in line if r in centre] for g, line in sweep_lines(tradeoff, runs).items()}
    wide = [*focus, *(r for m in families.values() if set(m) & set(focus) for r in m),
            *(r for m in sweeps.values() for r in m)]
    box = _zoom_box(centre, cis, list(dict.fromkeys(wide)))
    fig = Figure(figsize=(14, 7.5) if box else (9, 7.5), dpi=dpi)
    fig.subplots_adjust(left=0.06, right=0.98, top=0.93, bottom=0.21, wspace=0.12)
    axes = fig.subplots(1, 2 if box else 1, squeeze=False, width_ratios=[2, 3] if box else None)[0]
    handles = []
    for k, ax in enumerate(axes):
        for run, (mx, my) in centre.items():
            x0, x1, y0, y1 = cis[run]
            ax.errorbar([mx], [my], xerr=[[mx - x0], [x1 - mx]], yerr=[[my - y0], [y1 - my]], fmt="o", ms=5,
                        capsize=2, lw=0.8, color=colors[run], zorder=3)
        for name, members in families.items():
            if len(members) > 1:
                lrs = [float(runs[r]["lr"]) for r in members]
                h, = ax.plot(*zip(*(centre[r] for r in members)), ":", color=colors[name], lw=1.8, zorder=2,
                             label=f"lr {lrs[0]:.3g} → {lrs[-1]:.3g} (same settings otherwise): {' → '.join(members)}")
                handles.append(h) if k == 0 else None
        styles = ["-", "--", "-.", (0, (5, 1, 1, 1))]
        for i, (group, line) in enumerate(sweeps.items()):
            if len(line) > 1:
                h, = ax.plot(*zip(*(centre[r] for r in line)), linestyle=styles[i % len(styles)], color="0.3", lw=1,
                             zorder=2, label=f"sweep {group} (params plots.tradeoff): {' → '.join(line)}")
                handles.append(h) if k == 0 else None
        if ref in centre:
            ax.axhline(centre[ref][1], color=colors[ref], lw=0.6, alpha=0.4, zorder=1)
            ax.axvline(centre[ref][0], color=colors[ref], lw=0.6, alpha=0.4, zorder=1)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
    if centre:
        xs, ys = zip(*centre.values())
        padx, pady = 0.08 * (max(xs) - min(xs) or 1), 0.08 * (max(ys) - min(ys) or 1)
        axes[0].set_xlim(min(xs) - padx, max(xs) + padx)
        axes[0].set_ylim(min(ys) - pady, max(ys) + pady)
        if box:
            axes[1].set_xlim(box[0], box[1])
            axes[1].set_ylim(box[2], box[3])
            axes[0].add_patch(Rectangle(
                (box[0], box[2]), box[1] - box[0], box[3] - box[2], fill=False, ec="0.4", lw=0.8, ls="--", zorder=1))
            inside = {r: xy for r, xy in centre.items() if box[0] <= xy[0] <= box[1] and box[2] <= xy[1] <= box[3]}
            _place_labels(axes[1], fig, inside, dpi)
            _place_labels(axes[0], fig, {r: xy for r, xy in centre.items() if r not in inside}, dpi,
                          avoid=[(box[0], box[2]), (box[1], box[3])])
            axes[1].set_title("zoom: the dashed box on the left", fontsize=9)
        else:
            _place_labels(axes[0], fig, centre, dpi)
    else:
        axes[0].text(0.5, 0.5, "forgetting is undefined with 1 task", ha="center", transform=axes[0].transAxes)
    if handles:
        fig.legend(handles=handles, fontsize=7, loc="lower left", bbox_to_anchor=(0.06, 0.0), frameon=False,
                   title="lines: dotted = one run's settings at several lrs (the lr trade-off); solid/dashed = a sweep",
                   title_fontsize=7, alignment="left")
    if dead:
        fig.text(0.98, 0.01, "not shown, learned nothing: " + ", ".join(dead), fontsize=7, ha="right")
    axes[0].set_ylabel("average forgetting (percentage points)")
    fig.supxlabel("learning accuracy: mean accuracy on each task right after training it (%)", fontsize=9, y=0.135)
    fig.suptitle("Stability vs plasticity: mean, 95% CI over seeds; lower right is better"
                 + (f"; thin lines: {ref}" if ref in centre else ""), fontsize=10)
    _save(fig, path, dpi)


def make_figures(data, stats, out_dir, runs, tradeoff, dpi):
    """All figures into out_dir (a fresh directory standing for results/figures/).
    data: load_runs output; stats: results/stats.json content; runs: params runs (name -> settings);
    tradeoff: params plots.tradeoff. Returns the paths written, relative to results/."""
    runs = {run: runs[run] for run in runs if run in data}
    colors = run_colors(runs, stats)
    ref = home(runs, stats)
    acc = {run: data[run]["accuracy"] for run in runs}
    seeds = {run: data[run]["seed"] for run in runs}
    values = {run: headline(data[run]["accuracy"], data[run]["untrained_accuracy"]) for run in runs}
    pairs = [p for p in primary_pairs(stats) if p[0] in runs and p[1] in runs]
    paths = figure_paths(list(runs), pairs)
    out = lambda rel: out_dir / rel.removeprefix("figures/")  # noqa: E731
    rows, uncovered = forest_rows(runs, stats)
    plot_forest(rows, values, seeds, stats, colors, out(paths["forest"]), dpi, uncovered)
    groups = run_groups(runs, stats)
    curves = {}
    for run, R in acc.items():
        mean, _, low, high = mean_ci(100 * average_accuracy(R))
        curves[run] = (np.arange(1, len(mean) + 1), mean, low, high)
    plot_curves(curves, groups, colors, ref, out(paths["average_accuracy"]), dpi,
                "average accuracy on tasks seen (%)", "Average accuracy over tasks (mean, 95% CI over seeds)")
    forget = {}
    for run, R in acc.items():
        f = 100 * forgetting_per_task(R)
        mean, _, low, high = mean_ci(f)
        forget[run] = (np.arange(1, f.shape[-1] + 1), mean, low, high)
    plot_curves(forget, groups, colors, ref, out(paths["forgetting"]), dpi, "final forgetting (points)",
                "Final forgetting of each task after the last one (mean, 95% CI over seeds)", xlabel="task")
    dead = [run for run in runs if learned_nothing(data[run]["accuracy"]).any()]
    focus = [r for pair in pairs for r in pair]
    plot_stability_plasticity(values, runs, tradeoff, colors, ref, out(paths["stability_plasticity"]), dpi, dead, focus)
    for run in runs:
        plot_accuracy_matrix(run, acc[run], out(paths["matrix"][run]), dpi)
    for run, control in pairs:
        tests = {t["metric"]: t for t in stats["tests"]
                 if t["kind"] == "comparison" and (t["run"], t["control"]) in ((run, control), (control, run))}
        diffs = {m: _paired(values, seeds, run, control, m) for m in HEADLINE}
        plot_paired_difference(run, control, diffs, tests, out(paths["diff"][run, control]), dpi)
    return [paths["forest"], paths["average_accuracy"], paths["forgetting"], paths["stability_plasticity"],
            *paths["matrix"].values(), *paths["diff"].values()]


def update_fraction_figure(result, path, dpi):
    """Forgetting against the parameter-weighted update fraction u (log scale), every schedule at one lr:
    uniform schedules (circles, joined in order of u) and multi-timescale ones (triangles), labelled."""
    fig = Figure(figsize=(6.4, 4.4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    uniform = sorted((r for r in result["runs"] if r["kind"] == "uniform"), key=lambda r: r["u"])
    multi = [r for r in result["runs"] if r["kind"] == "multi-timescale"]
    ax.plot([r["u"] for r in uniform], [r["forgetting_pct"] for r in uniform], "o-", color="0.45",
            label="uniform (every level one period; batch varies)")
    ax.plot([r["u"] for r in multi], [r["forgetting_pct"] for r in multi], "^", color="tab:red", linestyle="none",
            label="multi-timescale (periods differ per level)")
    ax.set_xscale("log")
    ax.set_xlabel("parameter-weighted update fraction u (log scale; baseline = 1)")
    ax.set_ylabel("average forgetting (points)")
    ax.set_title(f"Forgetting vs update count, every schedule at lr {result['lr']:g}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    ax.set_ylim(ax.get_ylim()[0] - 1, ax.get_ylim()[1] + 1.5)  # room for labels
    _place_labels(ax, fig, {f"{r['run']} {'/'.join(map(str, r['periods']))}"
                            + ("" if r["batch_size"] == 128 else f" b{r['batch_size']}"): (r["u"], r["forgetting_pct"])
                            for r in uniform + multi}, dpi)
    _save(fig, path, dpi)
