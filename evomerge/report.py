"""Run plots: one data builder, two renderers (matplotlib PNG, self-contained plotly HTML).

`build_report` turns a RunView into plain arrays (`ReportData`); `render_png` and
`render_html` only draw them, so both outputs always show the same numbers.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from evomerge.errors import ConfigError
from evomerge.runview import RunView
from evomerge.units import pct

PLOTLY_PERCENT = ".0%"  # accuracies are stored as fractions; axes read in percent (evomerge.units)


def _percent_ticks(axis: Any) -> None:
    """Tick labels of a matplotlib accuracy axis in percent (values stay fractions)."""
    from matplotlib.ticker import PercentFormatter

    axis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))


# Marker per trial kind, shared by both renderers.
KIND_STYLE = {
    "search": {"color": "#9aa5b1", "mpl": "o", "plotly": "circle"},
    "front": {"color": "#1f77b4", "mpl": "o", "plotly": "circle"},
    "parent": {"color": "#d62728", "mpl": "^", "plotly": "triangle-up"},
    "baseline": {"color": "#2ca02c", "mpl": "s", "plotly": "square"},
    "knee": {"color": "#ff7f0e", "mpl": "*", "plotly": "star"},
}


@dataclass(frozen=True)
class Point:
    number: int
    kind: str  # search | parent | baseline
    label: str
    values: tuple[float, ...]
    on_front: bool


@dataclass(frozen=True)
class Heatmap:
    """Per-layer coefficients of one trial's recipe: one row per (model, parameter[, filter])."""

    number: int
    label: str
    rows: list[str]
    matrix: np.ndarray  # (n_rows, n_layers); scalars fill their whole row


@dataclass(frozen=True)
class ReportData:
    study: str
    objectives: list[str]
    points: list[Point]
    knee: int | None  # trial number
    completed: np.ndarray  # 1..n, completion index of each history step
    best_so_far: np.ndarray  # (n, n_objectives)
    hypervolume: np.ndarray  # (n,)
    heatmap: Heatmap | None


def build_report(view: RunView, trial: int | None = None) -> ReportData:
    """Collect everything the plots draw; the heat-map shows `trial` (default: the knee)."""
    front = {r.number for r in view.front()}
    points = [
        Point(
            r.number,
            r.kind if r.kind in ("parent", "baseline") else "search",
            r.label,
            r.values,
            r.number in front,
        )
        for r in view.completed
    ]
    knee = view.knee().number if view.completed else None
    chosen = view.trial(trial) if trial is not None else (view.trial(knee) if knee is not None else None)
    heatmap = None
    if chosen is not None and chosen.recipe:
        rows, matrix = coefficient_table(yaml.safe_load(chosen.recipe))
        if rows:
            heatmap = Heatmap(chosen.number, chosen.label or chosen.kind, rows, matrix)
    return ReportData(
        study=view.name,
        objectives=view.objectives,
        points=points,
        knee=knee,
        completed=np.arange(1, len(view.completed) + 1),
        best_so_far=view.best_so_far(),
        hypervolume=view.hypervolume_history(),
        heatmap=heatmap,
    )


def coefficient_table(recipe: dict[str, Any]) -> tuple[list[str], np.ndarray]:
    """Rows of numeric merge parameters of a mergekit recipe dict, spread over a common layer axis.

    A list value is a mergekit gradient: its entries are spaced evenly from the first to the last
    layer and interpolated linearly in between, so lists of different lengths share one axis.
    """
    entries: list[tuple[str, Any]] = []
    for model in recipe.get("models") or []:
        name = Path(str(model.get("model", "?"))).name
        for param, value in (model.get("parameters") or {}).items():
            entries += _param_entries(f"{name}.{param}", value)
    for param, value in (recipe.get("parameters") or {}).items():
        entries += _param_entries(param, value)
    entries = [(label, v) for label, v in entries if _numeric(v)]
    if not entries:
        return [], np.zeros((0, 0))
    width = max(len(v) if isinstance(v, list) else 1 for _, v in entries)
    positions = np.linspace(0.0, 1.0, width)
    matrix = np.empty((len(entries), width))
    for i, (_, value) in enumerate(entries):
        if isinstance(value, list):
            anchors = np.linspace(0.0, 1.0, len(value)) if len(value) > 1 else np.zeros(1)
            matrix[i] = np.interp(positions, anchors, np.asarray(value, dtype=float))
        else:
            matrix[i] = float(value)
    return [label for label, _ in entries], matrix


def _param_entries(label: str, value: Any) -> list[tuple[str, Any]]:
    """A parameter value, or its filtered variants ([{filter: mlp, value: ..}, {value: ..}])."""
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return [(f"{label}[{v.get('filter', '*')}]", v.get("value")) for v in value]
    return [(label, value)]


def _numeric(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return True
    return isinstance(value, list) and bool(value) and all(_numeric(v) for v in value)


def _style_key(point: Point, knee: int | None) -> str:
    if point.number == knee:
        return "knee"
    if point.kind != "search":
        return point.kind
    return "front" if point.on_front else "search"


def _legend(key: str) -> str:
    return {"search": "trial", "front": "Pareto front", "knee": "knee"}.get(key, key)


# ----- matplotlib -------------------------------------------------------------------------
def render_png(data: ReportData, out_dir: Path) -> list[Path]:
    """Write pareto.png, history.png and (when a recipe has coefficients) coefficients.png."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [_png_pareto(data, out_dir / "pareto.png"), _png_history(data, out_dir / "history.png")]
    if data.heatmap is not None:
        paths.append(_png_heatmap(data.heatmap, out_dir / "coefficients.png"))
    return paths


def _save_png(fig: Any, path: Path) -> None:
    """Every report figure at one resolution; "tight" keeps outside legends and long titles in."""
    fig.savefig(path, dpi=120, bbox_inches="tight")


def _png_pareto(data: ReportData, path: Path) -> Path:
    from matplotlib.figure import Figure

    n_obj = len(data.objectives)
    fig = Figure(figsize=(7.5, 5.5) if n_obj <= 2 else (max(7.5, 2.2 * n_obj), 5.5), layout="constrained")
    ax = fig.add_subplot()
    groups: dict[str, list[Point]] = {}
    for point in data.points:
        groups.setdefault(_style_key(point, data.knee), []).append(point)
    if n_obj == 2:
        front = sorted((p for p in data.points if p.on_front), key=lambda p: p.values[0])
        if front:
            ax.step(
                [p.values[0] for p in front],
                [p.values[1] for p in front],
                where="pre",  # the boundary of the dominated region (tasks maximized): down, then right
                color="#1f77b4",
                lw=1,
            )
        for key in ("search", "front", "baseline", "parent", "knee"):
            pts = groups.get(key, [])
            if not pts:
                continue
            style = KIND_STYLE[key]
            ax.scatter(
                [p.values[0] for p in pts],
                [p.values[1] for p in pts],
                c=style["color"],
                marker=style["mpl"],
                s=160 if key == "knee" else 60 if key in ("parent", "baseline") else 28,
                label=_legend(key),
                zorder=3,
                edgecolors="black" if key != "search" else "none",
                linewidths=0.5,
            )
            if key in ("parent", "baseline", "knee"):
                for p in pts:
                    ax.annotate(
                        p.label or f"#{p.number}",
                        p.values[:2],
                        textcoords="offset points",
                        xytext=(6, 6),
                        fontsize=8,
                    )
        ax.set_xlabel(f"{data.objectives[0]} (estimated accuracy)")
        ax.set_ylabel(f"{data.objectives[1]} (estimated accuracy)")
        _percent_ticks(ax.xaxis)
        ax.set_title(f"Pareto front of {data.study}:\n{len(front)} of {len(data.points)} completed trials")
        ax.grid(alpha=0.3)
    else:
        xs = np.arange(n_obj)
        for key in ("search", "front", "baseline", "parent", "knee"):
            pts = groups.get(key, [])
            style = KIND_STYLE[key]
            for i, p in enumerate(pts):
                ax.plot(
                    xs,
                    p.values,
                    color=style["color"],
                    marker=style["mpl"],
                    alpha=0.35 if key == "search" else 0.9,
                    lw=2.5 if key == "knee" else 1.2,
                    label=_legend(key) if i == 0 else None,
                )
        ax.set_xticks(xs, data.objectives)
        ax.set_ylabel("estimated accuracy")
        n_front = sum(p.on_front for p in data.points)
        ax.set_title(f"Trials of {data.study}\n(parallel coordinates): {n_front} on the Pareto front")
        ax.grid(alpha=0.3, axis="y")
    _percent_ticks(ax.yaxis)
    if not data.points:
        ax.text(0.5, 0.5, "no completed trial yet", ha="center", va="center", transform=ax.transAxes)
    elif n_obj == 2:
        ax.legend(loc="best", fontsize=8)
    else:  # lines cross the whole plot: keep the legend outside them
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    _save_png(fig, path)
    return path


def _png_history(data: ReportData, path: Path) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), layout="constrained")
    best_ax, hv_ax = fig.subplots(1, 2)
    for j, task in enumerate(data.objectives):
        best_ax.step(data.completed, data.best_so_far[:, j], where="post", label=task)
    best_ax.set_xlabel("completed trials")
    best_ax.set_ylabel("best estimated accuracy so far")
    _percent_ticks(best_ax.yaxis)
    best_ax.set_title("Best so far per task")
    best_ax.legend(fontsize=8)
    best_ax.grid(alpha=0.3)
    hv_ax.step(data.completed, data.hypervolume, where="post", color="#9467bd")
    hv_ax.set_xlabel("completed trials")
    hv_ax.set_ylabel("hypervolume (reference: accuracy 0)")
    hv_ax.set_title("Hypervolume of the front")
    hv_ax.grid(alpha=0.3)
    _save_png(fig, path)
    return path


def _png_heatmap(heatmap: Heatmap, path: Path) -> Path:
    from matplotlib.figure import Figure

    n_rows, n_layers = heatmap.matrix.shape
    fig = Figure(figsize=(max(6.0, 0.45 * n_layers + 3), max(2.5, 0.45 * n_rows + 1.5)), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(heatmap.matrix, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_yticks(np.arange(n_rows), heatmap.rows, fontsize=8)
    ax.set_xticks(np.arange(n_layers))
    ax.set_xlabel("layer")
    ax.set_title(f"Merge coefficients of trial #{heatmap.number} ({heatmap.label})")
    if n_rows * n_layers <= 400:
        middle = (heatmap.matrix.max() + heatmap.matrix.min()) / 2
        for (i, j), value in np.ndenumerate(heatmap.matrix):
            ax.text(
                j,
                i,
                f"{value:.2f}",
                ha="center",
                va="center",
                fontsize=7,
                color="black" if value > middle else "white",
            )
    fig.colorbar(image, ax=ax)
    _save_png(fig, path)
    return path


# ----- plotly -----------------------------------------------------------------------------
def render_html(data: ReportData, path: Path) -> Path:
    """One self-contained HTML page (plotly.js inlined) with the three figures."""
    import plotly.io as pio

    figures = [_plotly_pareto(data), _plotly_history(data)]
    if data.heatmap is not None:
        figures.append(_plotly_heatmap(data.heatmap))
    parts = [
        pio.to_html(fig, full_html=False, include_plotlyjs=(i == 0), default_width="100%")
        for i, fig in enumerate(figures)
    ]
    title = html.escape(f"evomerge run {data.study}")
    page = (
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{title}</title></head>"
        f"<body><h1>{title}</h1>\n" + "\n".join(parts) + "\n</body></html>\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def _hover(point: Point, objectives: list[str]) -> str:
    values = "<br>".join(f"{t}: {pct(v)}%" for t, v in zip(objectives, point.values, strict=True))
    return f"trial #{point.number} {html.escape(point.label)}<br>{values}"


def _plotly_pareto(data: ReportData) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure()
    if len(data.objectives) == 2:
        groups: dict[str, list[Point]] = {}
        for point in data.points:
            groups.setdefault(_style_key(point, data.knee), []).append(point)
        for key in ("search", "front", "baseline", "parent", "knee"):
            pts = groups.get(key, [])
            if not pts:
                continue
            style = KIND_STYLE[key]
            fig.add_trace(
                go.Scatter(
                    x=[p.values[0] for p in pts],
                    y=[p.values[1] for p in pts],
                    mode="markers+text" if key in ("parent", "baseline") else "markers",
                    text=[p.label for p in pts] if key in ("parent", "baseline") else None,
                    textposition="top right",
                    marker={
                        "color": style["color"],
                        "symbol": style["plotly"],
                        "size": 14 if key == "knee" else 9,
                    },
                    name=_legend(key),
                    hovertext=[_hover(p, data.objectives) for p in pts],
                    hoverinfo="text",
                )
            )
        fig.update_layout(xaxis_title=data.objectives[0], yaxis_title=data.objectives[1])
        fig.update_xaxes(tickformat=PLOTLY_PERCENT)
        fig.update_yaxes(tickformat=PLOTLY_PERCENT)
    else:
        keys = [_style_key(p, data.knee) for p in data.points]
        order = ["search", "front", "baseline", "parent", "knee"]
        codes = [order.index(k) for k in keys]
        scale = [[i / (len(order) - 1), KIND_STYLE[k]["color"]] for i, k in enumerate(order)]
        fig.add_trace(
            go.Parcoords(
                line={"color": codes, "colorscale": scale, "cmin": 0, "cmax": len(order) - 1},
                dimensions=[
                    {
                        "label": task,
                        "values": [p.values[j] for p in data.points],
                        "tickformat": PLOTLY_PERCENT,
                    }
                    for j, task in enumerate(data.objectives)
                ],
            )
        )
    fig.update_layout(
        title=f"Pareto front of {data.study} (grey: trials, blue: front, red: parents, green: baselines)"
    )
    return fig


def _plotly_history(data: ReportData) -> Any:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("Best so far per task", "Hypervolume of the front"))
    x = data.completed.tolist()
    for j, task in enumerate(data.objectives):
        fig.add_trace(go.Scatter(x=x, y=data.best_so_far[:, j].tolist(), name=task, line_shape="hv"), 1, 1)
    fig.add_trace(go.Scatter(x=x, y=data.hypervolume.tolist(), name="hypervolume", line_shape="hv"), 1, 2)
    fig.update_xaxes(title_text="completed trials")
    fig.update_yaxes(tickformat=PLOTLY_PERCENT, row=1, col=1)
    return fig


def _plotly_heatmap(heatmap: Heatmap) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure(
        go.Heatmap(z=heatmap.matrix.tolist(), y=heatmap.rows, colorscale="Viridis", texttemplate="%{z:.2f}")
    )
    fig.update_layout(
        title=f"Merge coefficients of trial #{heatmap.number} ({heatmap.label})",
        xaxis_title="layer",
        yaxis={"autorange": "reversed"},
    )
    return fig


def write_report(view: RunView, out_dir: Path, trial: int | None = None) -> list[Path]:
    """Build once, render both: PNGs and report.html under `out_dir`."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir}: exists and is not a directory; choose a directory path")
    data = build_report(view, trial)
    return [*render_png(data, out_dir), render_html(data, out_dir / "report.html")]
