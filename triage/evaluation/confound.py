"""The chest-drain confound: AUCs that a drain detector cannot earn.

On synthetic (and real) chest radiographs a drain is far more frequent with a pneumothorax than without
one (the phantom's default: 60 % of positives, 5 % of negatives), so a model that only detects drains
reaches a high AUC. Next to every AUC this module reports:

* ``drain_free_auc``: positives without a drain against negatives without a drain (what a drain cannot
  explain), with its bootstrap interval;
* ``with_drain_auc``: the same among images with a drain;
* ``drain_only_auc``: the AUC of the drain indicator itself on the same images (the confound's
  reference: a perfect drain detector scores this without seeing any pneumothorax);
* ``drain_free_by_size``: per size stratum, drain-free positives of that size against every drain-free
  negative.

Strata come from the data set's ``metadata.csv`` (``drain`` as ``yes``/``no`` or ``1``/``0``,
``size_stratum``); without a ``drain`` column there is nothing to report (None).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np
from numpy.typing import NDArray

from triage import metrics

SIZES = ("small", "medium", "large")
CI = Callable[[Callable[[NDArray[np.intp]], float], int, int], "tuple[float, float] | None"]


def _auc(scores: NDArray[Any], labels: NDArray[np.bool_]) -> float:
    if labels.all() or not labels.any():
        return float("nan")
    return metrics.roc_auc(scores, labels)


def _auc_at(scores: NDArray[Any], labels: NDArray[np.bool_], i: NDArray[np.intp]) -> float:
    return _auc(scores[i], labels[i])


def drain_flags(strata: Sequence[dict[str, str]]) -> NDArray[np.bool_] | None:
    """Per image: has a drain (None when any image's ``drain`` stratum is missing)."""
    values = [str(s.get("drain", "")).lower() for s in strata]
    if not values or any(v not in ("yes", "no", "1", "0") for v in values):
        return None
    return np.array([v in ("yes", "1") for v in values])


def drain_report(
    scores: NDArray[Any],
    labels: NDArray[Any],
    strata: Sequence[dict[str, str]],
    ci: CI | None = None,
    salt: int = 300,
) -> dict[str, Any] | None:
    """The AUCs above for ``scores`` (N,) against ``labels`` (N,); None without drain strata.

    ``ci(stat, n, salt)`` gives a bootstrap interval of ``stat(indices)`` over n items (None: no intervals).
    """
    drain = drain_flags(strata)
    if drain is None:
        return None
    p = np.asarray(scores, np.float64)
    y = np.asarray(labels) > 0
    free = np.flatnonzero(~drain)
    with_drain = np.flatnonzero(drain)
    out: dict[str, Any] = {
        "auc": _auc(p, y),
        "drain_free_auc": _auc(p[free], y[free]),
        "drain_free_images": len(free),
        "drain_free_positives": int(y[free].sum()),
        "with_drain_auc": _auc(p[with_drain], y[with_drain]),
        "with_drain_images": len(with_drain),
        "with_drain_positives": int(y[with_drain].sum()),
        "drain_only_auc": _auc(drain.astype(np.float64), y),
        "drain_given_positive": float(drain[y].mean()) if y.any() else float("nan"),
        "drain_given_negative": float(drain[~y].mean()) if (~y).any() else float("nan"),
    }
    if ci is not None:
        pf, yf = p[free], y[free]
        out["drain_free_auc_ci"] = ci(lambda i: _auc(pf[i], yf[i]), len(free), salt)
    sizes = [str(s.get("size_stratum", "")) for s in strata]
    by_size: dict[str, Any] = {}
    for k, size in enumerate(SIZES):
        member = np.array([s == size for s in sizes])
        idx = np.flatnonzero(~drain & ((member & y) | ~y))
        n_pos = int((member & y & ~drain).sum())
        if n_pos == 0:
            continue
        entry: dict[str, Any] = {"positives": n_pos, "auc": _auc(p[idx], y[idx])}
        if ci is not None:
            entry["auc_ci"] = ci(partial(_auc_at, p[idx], y[idx]), len(idx), salt + 1 + k)
        by_size[size] = entry
    out["drain_free_by_size"] = by_size
    return out


def _fmt(value: float, ci: tuple[float, float] | None = None) -> str:
    if not np.isfinite(value):
        return "–"
    return f"{value:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def drain_markdown(r: dict[str, Any]) -> str:
    """A table of :func:`drain_report`'s figures."""
    sizes = r.get("drain_free_by_size", {})
    header = ["AUC", "drain-free AUC", *(f"drain-free, {s}" for s in sizes), "with drain", "drain alone"]
    row = [
        _fmt(r["auc"]),
        _fmt(r["drain_free_auc"], r.get("drain_free_auc_ci")),
        *(_fmt(e["auc"], e.get("auc_ci")) for e in sizes.values()),
        _fmt(r["with_drain_auc"]),
        _fmt(r["drain_only_auc"]),
    ]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "---:|" * len(header),
        "| " + " | ".join(row) + " |",
        "",
        f"Drain-free: {r['drain_free_positives']} positives and "
        f"{r['drain_free_images'] - r['drain_free_positives']} negatives without a drain; size columns: "
        + ", ".join(f"{s} ({e['positives']} positives)" for s, e in sizes.items())
        + ' against every drain-free negative. "Drain alone": the AUC of the drain indicator itself '
        f"(drains on {r['drain_given_positive']:.0%} of positives, {r['drain_given_negative']:.0%} of "
        "negatives): a drain detector that sees no pneumothorax scores this much.",
    ]
    return "\n".join(lines)
