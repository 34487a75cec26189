"""Calibrated search settings: the cheapest setting that reaches a target recall on this catalogue.

Default search settings tuned on one catalogue lose recall on another (IVF-PQ's nprobe found 0.999 of
the exact top 10 on Book-Crossing and 0.866 on a 30k-book catalogue). So every index is calibrated on
the catalogue it is built for, with queries shaped like the real ones (the export's own user tower
over its known users; see `queries_from_users`):

1. the ground truth is the exact top k of every query (fast exact search, `ExactBackend`);
2. each backend offers *ladders* of search settings, each rung more thorough and slower than the one
   before (`Backend.calibration_ladders`: nprobe for IVF-PQ, leaves and reorder depth for ScaNN,
   ef_search for HNSW, with the number of candidates re-ranked exactly);
3. on each ladder a binary search finds the first rung whose recall@k *after exact re-ranking* (what
   `ItemIndex.search`, and so `recommend`, returns) reaches the target with 99% confidence (its mean
   less 2.326 standard errors over the queries);
4. the rungs found are timed one query at a time and the fastest wins. If no rung reaches the
   target, the most accurate rung measured is kept and the result says so.

FAISS's `ParameterSpace`/`OperatingPoints` explore settings the same way, but they judge an index by
its own result list; here recall is judged after the exact re-ranking, and the number of candidates
re-ranked is one of the settings, so the search is done here on the same few ladders.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from tte_tfrs.errors import ConfigError
from tte_tfrs.retrieval.exact import ExactBackend
from tte_tfrs.retrieval.item_index import ItemIndex
from tte_tfrs.retrieval.scoring import tie_aware_recall

DEFAULT_TARGET_RECALL = 0.95
DEFAULT_K = 10
DEFAULT_QUERIES = 1000
MIN_REAL_QUERIES = 300        # fewer real users than this: add synthetic queries shaped like them
CONFIDENCE_Z = 2.326          # one-sided 99%: the chosen setting holds on other queries too
TIMED_QUERIES = 200           # single queries timed per candidate setting...
TIMING_BUDGET_S = 2.0         # ...or fewer (at least 5) when they would take longer than this


@dataclasses.dataclass(frozen=True)
class CalibrationConfig:
    """How an index is calibrated.

    Attributes:
      target_recall: recall@k after exact re-ranking that the chosen setting must reach, in (0, 1].
      k: results per query the recall is measured at.
      queries: calibration queries wanted (real users first, then synthetic ones like them).
      seed: seeds the choice of users and the synthetic queries.
    """

    target_recall: float = DEFAULT_TARGET_RECALL
    k: int = DEFAULT_K
    queries: int = DEFAULT_QUERIES
    seed: int = 0

    def __post_init__(self):
        if isinstance(self.target_recall, bool) or not 0.0 < float(self.target_recall) <= 1.0:
            raise ConfigError(f"target_recall must be in (0, 1], got {self.target_recall!r}",
                              field="target_recall")
        for name, low in (("k", 1), ("queries", 10)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ConfigError(f"{name} must be a whole number of at least {low}, got {value!r}",
                                  field=f"calibration_{name}" if name != "k" else "calibration_k")
        if not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ConfigError(f"seed must be a non-negative whole number, got {self.seed!r}",
                              field="seed")


def queries_from_users(user_embeddings: np.ndarray, count: int, seed: int = 0) -> tuple[np.ndarray, dict]:
    """Calibration queries: real user embeddings, topped up with synthetic ones when there are few.

    With fewer than `MIN_REAL_QUERIES` users a recall estimate is too noisy (and tuned to a handful
    of users), so queries are added from a Gaussian fitted to the users (their mean and covariance,
    shrunk towards its diagonal; constant columns such as the bias column stay constant). With one
    user, the spread of the latent columns is taken as one unit per dimension of its own scale.

    Returns:
      (float32 [queries, dim], {"users": real queries used, "synthetic": generated ones}).
    """
    rng = np.random.default_rng(seed)
    users = np.asarray(user_embeddings, np.float32)
    if len(users) == 0:
        raise ValueError("no user embeddings to calibrate with")
    real = users[rng.choice(len(users), size=min(count, len(users)), replace=False)]
    wanted_real = min(count, MIN_REAL_QUERIES)
    if len(real) >= wanted_real:
        return real, {"users": len(real), "synthetic": 0}
    extra = max(count, MIN_REAL_QUERIES) - len(real)
    mean = users.mean(axis=0).astype(np.float64)
    if len(users) > 1:
        cov = np.cov(users.astype(np.float64), rowvar=False)
        cov = 0.5 * cov + 0.5 * np.diag(np.diag(cov))
    else:
        scale = np.abs(mean) + 1e-3
        varying = np.ones_like(mean)
        varying[-1] = 0.0                  # the user side's constant 1 pairing with the item bias
        cov = np.diag((scale * varying) ** 2)
    synthetic = rng.multivariate_normal(mean, cov, size=extra, method="eigh").astype(np.float32)
    constant = np.ptp(users, axis=0) == 0 if len(users) > 1 else np.zeros(users.shape[1], bool)
    synthetic[:, constant] = users[0, constant]
    return np.concatenate([real, synthetic]), {"users": len(real), "synthetic": int(extra)}


@dataclasses.dataclass
class Measurement:
    """Recall of one rung: the search settings, the candidates re-ranked, and what they gave."""

    search_params: dict
    rerank: int
    recall: float
    lower_bound: float
    p50_ms: float | None = None

    def summary(self) -> dict[str, Any]:
        out = {**self.search_params, "rerank": self.rerank, "recall": round(self.recall, 4),
               "recall_lower_bound": round(self.lower_bound, 4)}
        if self.p50_ms is not None:
            out["p50_ms"] = round(self.p50_ms, 4)
        return out


def exact_truth(embeddings: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k scores per query by fast exact search (float32 [queries, k])."""
    exact = ItemIndex(ExactBackend.build(embeddings), embeddings, np.arange(len(embeddings)))
    scores = []
    for start in range(0, len(queries), 256):
        scores.append(exact.search(queries[start:start + 256], k)[0])
    return np.concatenate(scores)


def measure(index: ItemIndex, queries: np.ndarray, truth: np.ndarray, k: int,
            search_params: Mapping[str, Any] | None = None, rerank: int | None = None,
            block: int = 256) -> Measurement:
    """Recall@k after exact re-ranking of `index` with `search_params` and `rerank` applied."""
    saved = dict(index.backend.search_params), index.rerank
    try:
        if search_params:
            index.backend.set_search_params(**search_params)
        if rerank is not None:
            index.rerank = rerank
        # Without the exact fallback for queries short of candidates: the index alone is measured.
        scores = np.concatenate([index.search(queries[start:start + block], k, fallback=False)[0]
                                 for start in range(0, len(queries), block)])
        per_query = tie_aware_recall(scores, truth)
        mean = float(per_query.mean())
        sem = float(per_query.std(ddof=1) / np.sqrt(len(per_query))) if len(per_query) > 1 else 0.0
        return Measurement(dict(index.backend.search_params), index.rerank, mean,
                           mean - CONFIDENCE_Z * sem)
    finally:
        index.backend.search_params, index.rerank = saved


def single_query_p50(index: ItemIndex, queries: np.ndarray, k: int,
                     search_params: Mapping[str, Any], rerank: int) -> float:
    """Median milliseconds of `ItemIndex.search` for one query at a time with these settings."""
    saved = dict(index.backend.search_params), index.rerank
    try:
        index.backend.set_search_params(**search_params)
        index.rerank = rerank
        started = time.perf_counter()
        for query in queries[:5]:                       # warm caches
            index.search(query[None, :], k, fallback=False)
        each = (time.perf_counter() - started) / min(5, len(queries))
        count = int(min(TIMED_QUERIES, max(5, TIMING_BUDGET_S / max(each, 1e-9))))
        times = []
        for query in queries[:count]:
            started = time.perf_counter()
            index.search(query[None, :], k, fallback=False)
            times.append(time.perf_counter() - started)
        return float(np.median(times) * 1e3)
    finally:
        index.backend.search_params, index.rerank = saved


def calibrate(index: ItemIndex, queries: np.ndarray, config: CalibrationConfig = CalibrationConfig(),
              truth: np.ndarray | None = None, query_sources: Mapping[str, int] | None = None,
              fixed: Mapping[str, Any] | None = None,
              fixed_rerank: int | None = None) -> dict[str, Any]:
    """Sets `index` to the cheapest search setting reaching the target; returns what was measured.

    Args:
      index: a built index (its search settings and `rerank` are changed in place).
      queries: float32 [queries, dim] calibration queries.
      config: target recall, k.
      truth: the exact top-k scores of `queries`, when already computed.
      query_sources: how many queries are real users and how many synthetic (recorded).
      fixed: search settings the user chose; they are kept and only measured.
      fixed_rerank: candidates re-ranked per result, when the user chose it (kept).

    Returns:
      A JSON-ready dict: target, k, queries, chosen settings, measured recall (and its 99% lower
      bound), single-query p50 and QPS, whether the target was reached, and a message.
    """
    k = int(min(config.k, len(index.ids)))
    queries = np.ascontiguousarray(queries, np.float32)
    if truth is None:
        truth = exact_truth(index.embeddings, queries, k)
    record: dict[str, Any] = {"target_recall": config.target_recall, "k": k,
                              "queries": dict(query_sources or {"given": len(queries)})}
    fixed = {key: v for key, v in (fixed or {}).items() if v is not None}
    if fixed:
        index.backend.set_search_params(**fixed)
    if fixed_rerank:
        index.rerank = fixed_rerank
    record["fixed"] = {"search_params": fixed, "rerank": fixed_rerank} if fixed or fixed_rerank else None
    ladders = [] if fixed else index.backend.calibration_ladders(k)
    if fixed_rerank:
        unique = {}
        for ladder in ladders:
            rungs = [(params, fixed_rerank) for params, _ in ladder]
            unique.setdefault(repr(rungs), rungs)
        ladders = list(unique.values())
    if not ladders:
        chosen = measure(index, queries, truth, k)
        chosen.p50_ms = single_query_p50(index, queries, k, index.backend.search_params, index.rerank)
        reached = chosen.lower_bound >= config.target_recall
        why = "settings given by the user" if fixed else f"{index.name} has no search settings"
        return _finish(index, record, chosen, [chosen], reached, why)
    found, tried = [], []
    for ladder in ladders:
        result, seen = _first_reaching(index, queries, truth, k, ladder, config.target_recall)
        tried.extend(seen)
        if result is not None:
            found.append(result)
    if found:
        for candidate in found:
            candidate.p50_ms = single_query_p50(index, queries, k, candidate.search_params,
                                                candidate.rerank)
        chosen = min(found, key=lambda m: m.p50_ms)
        return _finish(index, record, chosen, tried, True,
                       f"cheapest of {len(found)} settings reaching the target")
    best = max(tried, key=lambda m: (m.lower_bound, m.recall))
    best.p50_ms = single_query_p50(index, queries, k, best.search_params, best.rerank)
    return _finish(index, record, best, tried, False,
                   f"no setting reached recall@{k} {config.target_recall} (best {best.recall:.4f}); "
                   f"fell back to the most accurate setting measured. Rebuild with finer settings "
                   f"(more cells or sub-quantizers) or use --backend=exact")


def _first_reaching(index, queries, truth, k, ladder, target):
    """The first rung of `ladder` (rungs in increasing effort) reaching `target`, or None.

    Galloping search: rungs 0, 1, 3, 7, ... until one reaches the target, then a binary search
    back, so the cost is a few evaluations near the answer, never the most expensive rung first.
    """
    seen = {}

    def reaches(position):
        if position not in seen:
            params, rerank = ladder[position]
            seen[position] = measure(index, queries, truth, k, params, rerank)
        return seen[position].lower_bound >= target

    last_fail, position, step = -1, 0, 1
    while not reaches(position):
        last_fail = position
        if position == len(ladder) - 1:
            return None, list(seen.values())
        position, step = min(position + step, len(ladder) - 1), step * 2
    low, high = last_fail + 1, position
    while low < high:
        middle = (low + high) // 2
        if reaches(middle):
            high = middle
        else:
            low = middle + 1
    return seen[high], list(seen.values())


def _finish(index, record, chosen, tried, reached, why):
    index.backend.set_search_params(**chosen.search_params)
    index.rerank = chosen.rerank
    p50 = chosen.p50_ms
    record.update({
        "search_params": dict(index.backend.search_params), "rerank": index.rerank,
        "recall": round(chosen.recall, 4), "recall_lower_bound": round(chosen.lower_bound, 4),
        "single_query_p50_ms": round(p50, 4) if p50 is not None else None,
        "qps": round(1e3 / p50, 1) if p50 else None, "reached": bool(reached), "message": why,
        "measured": [m.summary() for m in tried][:40]})
    index.calibration = record
    return record
