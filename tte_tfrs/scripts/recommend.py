"""tte-recommend: top-k items for a user, by id or by raw features.

Example:
  tte-recommend --user_id=11 --k=5
  tte-recommend --feature="location=porto, v.n.gaia, portugal" --feature=age=31 --format=json
"""

import json
import sys

from absl import app, flags

from tte_tfrs.errors import TteError
from tte_tfrs.recommender import Recommender
from tte_tfrs.scripts import shared_flags  # shared flags --output_dir, --backend and start()

flags.DEFINE_string("user_id", None, "A known user's id.")
flags.DEFINE_multi_string("feature", [], "A raw user feature as name=value; repeat for several.")
flags.DEFINE_bool("include_rated", False, "Also recommend items the user has already rated.")
flags.DEFINE_enum("format", "table", ["table", "json"], "Output format.")
FLAGS = flags.FLAGS


def parse_features(pairs):
    features = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--feature takes name=value, got {pair!r}")
        features[name.strip()] = value
    return features


def format_table(recommendations):
    if not recommendations:
        return "(no items)"
    width = max(len(r.item_id) for r in recommendations)
    lines = [f"{'rank':>4}  {'item':<{width}}  {'score':>7}  title"]
    lines += [f"{r.rank:>4}  {r.item_id:<{width}}  {r.score:7.3f}  {r.title}"
              for r in recommendations]
    return "\n".join(lines)


def main(argv):
    shared_flags.start(argv)
    try:
        features = parse_features(FLAGS.feature)
        recommender = Recommender.load(FLAGS.output_dir, backend=FLAGS.backend)
        recommendations = recommender.recommend(FLAGS.user_id, features, FLAGS.k,
                                                exclude_rated=not FLAGS.include_rated)
    except (TteError, ValueError, OSError) as exc:
        print(f"tte-recommend: error: {exc}", file=sys.stderr)
        return 2
    if FLAGS.format == "json":
        print(json.dumps({"user_id": FLAGS.user_id, "features": features,
                          "version": recommender.version, "backend": recommender.index.name,
                          "recommendations": [r.to_dict() for r in recommendations]}, indent=2))
    else:
        for note in recommender.index.notes:
            print(f"note: {note}", file=sys.stderr)
        who = f"user {FLAGS.user_id}" if FLAGS.user_id else f"a new user {features}"
        print(f"Top {len(recommendations)} for {who} (version {recommender.version}, "
              f"{recommender.index.name} index):")
        print(format_table(recommendations))
    return 0


def run():
    app.run(main)


if __name__ == "__main__":
    run()
