"""Surprise peers (SVD, SVD++, BaselineOnly, SVD tuned on validation), popularity and global mean.

Every peer that does not early-stop is fitted on train + validation. "SVD tuned" picks the grid point
with the best validation RMSE when fitted on the training rows, then refits that point on train +
validation. Ranking: each peer's own scoring function over the protocol's candidates.
"""

import itertools
import time

import numpy as np
import pandas as pd

from tte_tfrs.evaluation import metrics

SVD_GRID = {"n_factors": (50, 100, 200), "reg_all": (0.02, 0.05, 0.1, 0.15),
            "lr_all": (0.005, 0.01)}                            # 24 points, n_epochs 20


def _trainset(ratings, rating_scale):
    from surprise import Dataset, Reader
    reader = Reader(rating_scale=rating_scale)
    return Dataset.load_from_df(ratings[["user_id", "item_id", "rating"]], reader).build_full_trainset()


def _predict(algo, rows):
    return np.array([algo.predict(u, i).est
                     for u, i in zip(rows["user_id"], rows["item_id"])])


def _inner(convert, raw):
    """Surprise's inner id of a raw id, or -1 when the trainset does not know it."""
    try:
        return convert(raw)
    except ValueError:
        return -1


def score_function(algo, trainset, protocol):
    """score(n) -> the peer's scores of every candidate for the protocol's n-th user."""
    candidates = protocol.candidates
    inner = np.array([_inner(trainset.to_inner_iid, i) for i in candidates])
    known = inner >= 0
    bi = np.zeros(len(candidates))
    bi[known] = algo.bi[inner[known]]
    qi = None
    if getattr(algo, "qi", None) is not None:
        qi = np.zeros((len(candidates), algo.qi.shape[1]))
        qi[known] = algo.qi[inner[known]]

    def score(n):
        user = protocol.users[n]
        scores = trainset.global_mean + bi
        u = _inner(trainset.to_inner_uid, user)
        if u >= 0:
            scores = scores + algo.bu[u]
            if qi is not None:
                vector = algo.pu[u]
                if hasattr(algo, "yj"):                 # SVD++: the implicit part of the user
                    rated = [j for j, _ in trainset.ur[u]]
                    vector = vector + algo.yj[rated].sum(0) / np.sqrt(max(len(rated), 1))
                scores = scores + qi @ vector
        return scores
    return score


def fit_peers(train, validation, test, rating_scale, with_svdpp, seed=0):
    """Fits every Surprise peer; returns [(name, algo, trainset, test predictions, seconds, note)]."""
    from surprise import SVD, BaselineOnly, SVDpp
    both = pd.concat([train, validation], ignore_index=True)
    full = _trainset(both, rating_scale)
    out = []
    peers = [("Surprise SVD", lambda: SVD(random_state=seed), "defaults (100 factors, 20 epochs)"),
             ("Surprise BaselineOnly", lambda: BaselineOnly(verbose=False), "defaults (ALS)")]
    if with_svdpp:
        peers.append(("Surprise SVD++", lambda: SVDpp(random_state=seed),
                      "defaults (20 factors, 20 epochs)"))
    for name, make, note in peers:
        started = time.perf_counter()
        algo = make()
        algo.fit(full)
        out.append((name, algo, full, _predict(algo, test), time.perf_counter() - started, note))
    started = time.perf_counter()
    best = tune_svd(train, validation, rating_scale, seed)
    algo = SVD(random_state=seed, **best)
    algo.fit(full)
    out.append(("Surprise SVD tuned on validation", algo, full, _predict(algo, test),
                time.perf_counter() - started,
                "24-point grid " + ", ".join(f"{k} {v}" for k, v in best.items())))
    return out


def tune_svd(train, validation, rating_scale, seed=0):
    """The SVD_GRID point with the lowest validation RMSE (fitted on `train`)."""
    from surprise import SVD
    trainset = _trainset(train, rating_scale)
    scored = []
    for values in itertools.product(*SVD_GRID.values()):
        setting = dict(zip(SVD_GRID, values))
        algo = SVD(random_state=seed, **setting)
        algo.fit(trainset)
        scored.append((metrics.rmse(validation["rating"], _predict(algo, validation)), setting))
    return min(scored, key=lambda pair: pair[0])[1]


def popularity_scores(train, validation, protocol, extra=None):
    """score(n) for the most-rated ranker: each candidate's count of training interactions."""
    rows = [train, validation] + ([extra] if extra is not None else [])
    counts = pd.concat(rows)["item_id"].value_counts()
    scores = counts.reindex(protocol.candidates).fillna(0).to_numpy(np.float64)
    return lambda n: scores
