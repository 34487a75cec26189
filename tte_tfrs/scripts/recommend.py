"""tte-recommend: top-k items for a user, by id or by raw features.

Examples:
  tte-recommend --user_id=11 --k=5
  tte-recommend --feature="location=porto, v.n.gaia, portugal" --feature=age=31 --format=json
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from absl import flags

from tte_tfrs.errors import ConfigError
from tte_tfrs.retrieval import BACKENDS, DEFAULT_BACKEND
from tte_tfrs.scripts import cli
from tte_tfrs.serving.recommender import Recommendation, Recommender

PROGRAM = "tte-recommend"


def define_flags(values: flags.FlagValues) -> None:
    flags.DEFINE_string("output_dir", "saved_models", "Export root written by tte-train.",
                        flag_values=values)
    flags.DEFINE_enum("backend", DEFAULT_BACKEND, list(BACKENDS), "Retrieval backend.",
                      flag_values=values)
    flags.DEFINE_string("user_id", None, "A known user's id.", flag_values=values)
    flags.DEFINE_multi_string("feature", [], "A raw user feature as name=value; repeat for "
                              "several.", flag_values=values)
    flags.DEFINE_integer("k", 10, "How many items to recommend.", lower_bound=1,
                         flag_values=values)
    flags.DEFINE_bool("include_rated", False, "Also recommend items the user has already rated.",
                      flag_values=values)
    flags.DEFINE_enum("format", "table", ["table", "json"], "Output format.", flag_values=values)


def parse_features(pairs: Sequence[str]) -> dict[str, str]:
    """``["age=31", ...]`` -> ``{"age": "31", ...}``.

    Raises:
      ConfigError: an item without ``=`` or without a name.
    """
    features = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"takes name=value, got {pair!r}", field="feature")
        features[name.strip()] = value
    return features


def format_table(recommendations: Sequence[Recommendation]) -> str:
    if not recommendations:
        return "(no items)"
    width = max(len(r.item_id) for r in recommendations)
    lines = [f"{'rank':>4}  {'item':<{width}}  {'score':>7}  title"]
    lines += [f"{r.rank:>4}  {r.item_id:<{width}}  {r.score:7.3f}  {r.title}"
              for r in recommendations]
    return "\n".join(lines)


def main(values: flags.FlagValues) -> int:
    features = parse_features(values.feature)
    recommender = Recommender.load(values.output_dir, backend=values.backend)
    recommendations = recommender.recommend(values.user_id, features, values.k,
                                            exclude_rated=not values.include_rated)
    if values.format == "json":
        print(json.dumps({"user_id": values.user_id, "features": features,
                          "version": recommender.version, "backend": recommender.index.name,
                          "recommendations": [r.to_dict() for r in recommendations]}, indent=2))
        return 0
    for note in recommender.index.notes:
        print(f"note: {note}", file=sys.stderr)
    who = f"user {values.user_id}" if values.user_id else f"a new user {features}"
    print(f"Top {len(recommendations)} for {who} (version {recommender.version}, "
          f"{recommender.index.name} index):")
    print(format_table(recommendations))
    return 0


def run(argv: Sequence[str] | None = None) -> int:
    """The ``tte-recommend`` console script; returns the exit code."""
    return cli.run(PROGRAM, __doc__, define_flags, main, argv)


if __name__ == "__main__":
    sys.exit(run())
