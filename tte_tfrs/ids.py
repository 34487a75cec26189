"""The one normalisation of ids, in plain Python (no TensorFlow), for every lookup outside the
graphs: readers, the users table, rated items, evaluation, requests.

`canonical_id` is the exact twin of `tte_tfrs.data.features.normalize_id`, the TensorFlow op the
exported towers apply (a test holds them to agree): ASCII white space stripped (what
``tf.strings.strip`` removes), and for ISBNs ASCII upper case with only [0-9A-Z] kept. `id_problem`
says which ids cannot be stored safely.

May import nothing from the package.
"""

from __future__ import annotations

import re
from typing import Any

import pandas as pd

# What tf.strings.strip removes (ASCII white space only): canonical_id strips exactly these.
ASCII_WHITESPACE = " \t\n\v\f\r"
# Longer ids are refused: an id's length multiplies the memory of every table that holds it.
MAX_ID_CHARS = 64
# Characters no id may contain: C0/C1 controls and the separators str.splitlines() breaks on.
CONTROL_CHARACTERS = "[\x00-\x1f\x7f-\x9f\u2028\u2029]"
_CONTROL = re.compile(CONTROL_CHARACTERS)
_ASCII_UPPER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")
CONTROL_REASON = "contains a control character (such as a line break)"
LENGTH_REASON = f"is longer than {MAX_ID_CHARS} characters"


def canonical_id(value: Any, how: str = "") -> str | None:
    """The one form of an id every lookup uses (None stays None)."""
    if value is None:
        return None
    text = str(value).strip(ASCII_WHITESPACE)
    if how == "isbn":
        text = re.sub("[^0-9A-Z]", "", text.translate(_ASCII_UPPER))
    return text


def canonical_ids(values: Any, how: str = "") -> pd.Series:
    """`canonical_id` over a column (a pandas Series of str, index kept)."""
    series = pd.Series(values, dtype=object).astype(str).str.strip(ASCII_WHITESPACE)
    if how == "isbn":
        series = series.str.translate(_ASCII_UPPER).str.replace("[^0-9A-Z]", "", regex=True)
    return series


def id_problem(value: Any) -> str | None:
    """Why `value` cannot be an id (too long, or a control character), or None when it can."""
    text = str(value)
    if len(text) > MAX_ID_CHARS:
        return LENGTH_REASON
    if _CONTROL.search(text):
        return CONTROL_REASON
    return None


def id_problems(values: Any) -> pd.Series:
    """`id_problem` over a column, vectorised: a Series of reasons (None where the id is fine)."""
    series = pd.Series(values, dtype=object).astype(str)
    reasons = pd.Series(None, index=series.index, dtype=object)
    reasons[series.str.contains(CONTROL_CHARACTERS, regex=True).to_numpy(dtype=bool)] = CONTROL_REASON
    reasons[(series.str.len() > MAX_ID_CHARS).to_numpy(dtype=bool)] = LENGTH_REASON
    return reasons
