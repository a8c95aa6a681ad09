"""The drain confound's AUCs: a pure drain detector earns its AUC from drains alone and nothing without
them; a pneumothorax detector keeps its AUC among drain-free images."""

from __future__ import annotations

import numpy as np

from triage.evaluation.confound import drain_flags, drain_markdown, drain_report


def _set(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[dict[str, str]]]:
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.3
    drain = np.where(y, rng.random(n) < 0.6, rng.random(n) < 0.05)
    sizes = np.where(y, rng.choice(["small", "medium", "large"], n), "none")
    pairs = zip(drain, sizes, strict=True)
    strata = [{"drain": "yes" if d else "no", "size_stratum": str(s)} for d, s in pairs]
    return y, drain, strata


def test_a_drain_detector_scores_the_reference_and_nothing_without_drains() -> None:
    y, drain, strata = _set()
    r = drain_report(drain.astype(float), y, strata)
    assert r is not None
    assert r["auc"] == r["drain_only_auc"] > 0.7
    assert r["drain_free_auc"] == 0.5  # all drain-free images tie
    assert all(e["auc"] == 0.5 for e in r["drain_free_by_size"].values())


def test_a_pneumothorax_detector_keeps_its_auc_without_drains() -> None:
    y, _, strata = _set()
    r = drain_report(y.astype(float), y, strata, ci=lambda stat, n, salt: (0.0, 1.0))
    assert r is not None
    assert r["drain_free_auc"] == r["with_drain_auc"] == 1.0
    assert set(r["drain_free_by_size"]) == {"small", "medium", "large"}
    assert r["drain_free_auc_ci"] == (0.0, 1.0)
    assert r["drain_free_positives"] == int((y & ~drain_flags(strata)).sum())  # type: ignore[operator]
    assert "drain alone" in drain_markdown(r)


def test_no_drain_strata_means_no_report() -> None:
    assert drain_report(np.zeros(3), np.array([0, 1, 0]), [{"view": "PA"}] * 3) is None
