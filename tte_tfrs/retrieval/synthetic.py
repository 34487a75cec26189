"""Tower-shaped item and user embeddings of any size, for tests and retrieval benchmarks.

They mimic what the towers export (``[latent k, 1, b_i]`` for items, ``[latent k, mu + b_u, 1]`` for
users, so the dot product is the predicted rating), with the shape measured on the Book-Crossing
implicit export trained with today's defaults (339,898 books, BENCHMARKS.md, retrieval section):

- item latent lengths are right-skewed with a long tail (quantiles 1/10/50/90/99/99.9%: 0.13, 0.17,
  0.21, 0.29, 0.45, 0.68; longest 1.55): log-length = normal + exponential;
- item biases are heavy-tailed (Student t, 6 degrees of freedom) and larger for long items;
- users share a common latent direction (the mean user latent has length 1.1 against a spread of
  0.28 per dimension) and the longest items lean towards it (cosine 0.3 for the longest 1%), so the
  best items for most users are popular, well-learned ones, as in the real catalogue;
- one large group of items shares one short vector (items that were never trained: 12% in
  Book-Crossing), which exercises ties;
- item directions gather around a few dozen "genre" clusters.

Every scale is a field of `TowerShape`, so harder catalogues (e.g. no common direction, heavier
tails) can be generated too.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class TowerShape:
    """Scales of generated embeddings (defaults measured on Book-Crossing).

    Attributes:
      latent_dim: k, the latent dimension (vectors have k + 2 dimensions).
      clusters: latent directions items gather around.
      cluster_spread: how far an item's direction strays from its cluster's (relative).
      log_length_mean: mean of the normal part of log(item latent length).
      log_length_std: its standard deviation.
      length_tail: scale of the exponential part of log(item latent length) (the long tail).
      bias_scale: scale of the Student-t (6 degrees of freedom) item bias.
      bias_per_length: extra item bias per unit of latent length above the median.
      popularity_lean: how far long items lean towards the users' common direction.
      duplicate_share: share of items that share one identical short vector (ties).
      user_common_length: length of the users' common latent direction.
      user_latent_std: per-dimension spread of user latent parts around it.
      user_offset_mean: mean of the user's mu + b_u column.
      user_offset_scale: Student-t scale of that column.
    """

    latent_dim: int = 16
    clusters: int = 48
    cluster_spread: float = 0.8
    log_length_mean: float = -1.7
    log_length_std: float = 0.15
    length_tail: float = 0.18
    bias_scale: float = 0.14
    bias_per_length: float = 0.8
    popularity_lean: float = 0.35
    duplicate_share: float = 0.12
    user_common_length: float = 1.1
    user_latent_std: float = 0.28
    user_offset_mean: float = 3.66
    user_offset_scale: float = 0.3


def _common_direction(shape: TowerShape) -> np.ndarray:
    direction = np.random.default_rng(12345).normal(size=shape.latent_dim)
    return direction / np.linalg.norm(direction)


def tower_shaped_items(count: int, shape: TowerShape = TowerShape(), seed: int = 0,
                       chunk: int = 1_000_000) -> np.ndarray:
    """float32 [count, k + 2] item embeddings; generated in chunks so 10M items fit in memory."""
    rng = np.random.default_rng(seed)
    k = shape.latent_dim
    common = _common_direction(shape)
    centres = rng.normal(size=(shape.clusters, k))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    weights = rng.dirichlet(np.full(shape.clusters, 1.0))
    median = float(np.exp(shape.log_length_mean + shape.length_tail * np.log(2)))
    items = np.empty((count, k + 2), np.float32)
    for start in range(0, count, chunk):
        n = min(chunk, count - start)
        length = np.exp(shape.log_length_mean + shape.log_length_std * rng.normal(size=n)
                        + shape.length_tail * rng.exponential(size=n))
        direction = centres[rng.choice(shape.clusters, size=n, p=weights)]
        direction = direction + rng.normal(0, shape.cluster_spread / np.sqrt(k), (n, k))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        lean = shape.popularity_lean * np.clip((length - median) / (2 * median), 0, 2)
        direction = direction + lean[:, None] * common
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        items[start:start + n, :k] = direction * length[:, None]
        items[start:start + n, k] = 1.0
        items[start:start + n, k + 1] = (shape.bias_scale * rng.standard_t(6, size=n)
                                         + shape.bias_per_length * np.maximum(length - median, 0))
    duplicates = int(count * shape.duplicate_share)
    if duplicates:
        shared = np.zeros(k + 2, np.float32)
        shared[:k] = centres[0] * median
        shared[k] = 1.0
        items[rng.choice(count, size=duplicates, replace=False)] = shared
    return items


def tower_shaped_users(count: int, shape: TowerShape = TowerShape(), seed: int = 1) -> np.ndarray:
    """float32 [count, k + 2] user (query) embeddings."""
    rng = np.random.default_rng(seed)
    k = shape.latent_dim
    users = np.empty((count, k + 2), np.float32)
    users[:, :k] = (shape.user_common_length * _common_direction(shape)
                    + rng.normal(0, shape.user_latent_std, (count, k)))
    users[:, k] = shape.user_offset_mean + shape.user_offset_scale * rng.standard_t(4, size=count)
    users[:, k + 1] = 1.0
    return users


def item_ids(count: int) -> np.ndarray:
    """Ids for generated items, sorted like an export's (zero-padded, so string order = row order)."""
    width = len(str(max(count - 1, 0)))
    return np.array([f"item-{n:0{width}d}" for n in range(count)], dtype=object)
