"""Column-level cleaning shared by the readers: every change is counted in a `FileReport`.

Every function works on any slice of rows (a streaming reader can call them chunk by chunk) and
ids of every kind pass through `clean_ids`, the readers' side of the one id normalisation.
"""

import html

import numpy as np
import pandas as pd

from tte_tfrs import ids
from tte_tfrs.errors import DataError

# Part of the report reason for dropped ratings outside the scale (updates refuse such files).
OUT_OF_SCALE = "outside the rating scale"


def clean_ratings(frame, display, report, columns, scale):
    """Validates a ratings table (user, item, rating as strings) and returns the kept rows.

    Args:
      frame: DataFrame with ``user_id``, ``item_id``, ``rating`` (strings) and ``line``.
      display: file name for messages.
      report: `FileReport` receiving the counts.
      columns: names of the user, item and rating columns in the file, for messages.
      scale: (lowest, highest) allowed rating, inclusive.

    Raises:
      DataError: the rating column is not numeric (most values are not numbers), naming the first
        offending line.
    """
    user_col, item_col, rating_col = columns
    rating = pd.to_numeric(frame["rating"].str.strip(), errors="coerce")
    not_number = rating.isna().to_numpy()
    if len(frame) and not_number.mean() > 0.5:
        first = int(np.argmax(not_number))
        raise DataError(display, f"expected a number from {scale[0]:g} to {scale[1]:g} in column "
                        f"{rating_col!r}, found {frame['rating'].iloc[first]!r}; most rows have no "
                        "numeric rating: is this the right file and separator?",
                        line=int(frame["line"].iloc[first]), field=rating_col)
    frame = frame.assign(rating=rating.astype(np.float32))
    keep = _drop(frame, not_number, report, f"{rating_col} is not a number")
    frame = frame[keep]
    keep = _drop(frame, ~frame["rating"].between(scale[0], scale[1]).to_numpy(), report,
                 f"{rating_col} {OUT_OF_SCALE} {scale[0]:g}-{scale[1]:g}")
    frame = clean_ids(frame[keep], "user_id", "", report, user_col)
    return clean_ids(frame, "item_id", "", report, item_col)


def clean_ids(frame, column, how, report, label):
    """Puts the ids of `column` in their one canonical form (`tte_tfrs.ids.canonical_id`).

    Rows whose id cannot be stored safely (`tte_tfrs.ids.id_problem`: longer than
    `tte_tfrs.ids.MAX_ID_CHARS`, or holding a control character such as a line break, which would
    not survive a line-per-id file) are dropped, as are ids left empty; both are counted.
    """
    frame = frame.assign(**{column: ids.canonical_ids(frame[column], how).to_numpy(dtype=object)})
    problems = ids.id_problems(frame[column])
    for reason in problems.dropna().unique():
        frame = frame[_drop(frame, (problems == reason).to_numpy(), report, f"{label} {reason}")]
        problems = problems[problems != reason]
    keep = _drop(frame, frame[column].eq("").to_numpy(), report,
                 f"{label} is empty" if not how else f"{label} has no letters or digits")
    return frame[keep]


def normalize_item_ids(frame, spec, display, report, item_col):
    """Applies the item id spec's normalisation, counting changed ids and dropping emptied ones."""
    raw = ids.canonical_ids(frame["item_id"], "")
    frame = clean_ids(frame, "item_id", spec.normalize, report, item_col)
    changed = frame["item_id"].to_numpy() != raw[frame.index].to_numpy()
    report.fix(f"{item_col} normalised (spaces, punctuation, lower-case x removed)",
               frame["line"].to_numpy()[changed])
    return frame


def check_dropped_share(report, limit):
    """Refuses data of which a large share of some file's rows was dropped.

    Args:
      report: the `DataReport` of a data set (its counts may be cumulative over chunks).
      limit: the largest share of a file's rows that may be dropped, 0 to 1.

    Raises:
      DataError: a file lost more than `limit` of its rows, naming the file, the main reason and
        the first lines concerned, and the setting that overrides the check.
    """
    for file in report.files:
        dropped = sum(file.dropped.values())
        if file.rows_read and dropped / file.rows_read > limit:
            reason, count = max(file.dropped.items(), key=lambda kv: kv[1])
            lines = ", ".join(map(str, file.examples.get(reason, [])))
            raise DataError(
                file.path, f"{dropped:,} of its {file.rows_read:,} rows ({dropped / file.rows_read:.0%}) "
                f"were dropped, more than the {limit:.0%} allowed; mostly {count:,} for: {reason} "
                f"(first at line {lines}). A model trained on the rest would be wrong: fix the file, "
                f"or raise max_dropped_fraction (--max_dropped_fraction=1 trains anyway)",
                line=file.examples.get(reason, [None])[0])


def drop_duplicates(frame, keys, report, reason, keep="last"):
    """Drops repeated `keys`, keeping the `keep` occurrence in file order, and counts them."""
    duplicated = frame.duplicated(subset=keys, keep=keep).to_numpy()
    return frame[_drop(frame, duplicated, report, reason)]


def clean_number(frame, column, spec, report, label):
    """Parses a numeric feature column; empty, non-numeric and out-of-range values become NaN."""
    raw = frame[column].astype(str).str.strip()
    value = pd.to_numeric(raw, errors="coerce")
    lines = frame["line"].to_numpy()
    empty = raw.eq("").to_numpy() | raw.str.lower().isin(["nan", "null", "none", "n/a"]).to_numpy()
    not_number = value.isna().to_numpy() & ~empty
    low, high = spec.boundaries[0], spec.boundaries[-1]
    out_of_range = value.notna().to_numpy() & ~((value > low) & (value <= high)).to_numpy()
    report.fix(f"{label} empty -> unknown", lines[empty])
    report.fix(f"{label} not a number -> unknown", lines[not_number])
    report.fix(f"{label} outside {low:g}-{high:g} (e.g. 0) -> unknown", lines[out_of_range])
    value = value.where(~pd.Series(out_of_range, index=value.index))
    return value.astype(np.float32)


def clean_text(frame, column, report, label):
    """Strips white space and unescapes HTML entities (``&amp;``) in a text column."""
    raw = frame[column].astype(str)
    stripped = raw.str.strip()
    has_entity = stripped.str.contains(r"&(?:[a-zA-Z]+|#\d+);", regex=True).to_numpy()
    report.fix(f"{label} HTML entity unescaped", frame["line"].to_numpy()[has_entity])
    if has_entity.any():
        stripped = stripped.where(~has_entity, stripped[has_entity].map(html.unescape))
    return stripped


def _drop(frame, mask, report, reason):
    report.drop(reason, frame["line"].to_numpy()[mask])
    return ~mask
