"""Detects which data set a folder holds and reads it."""

import os

from tte_tfrs.data import bookcrossing, movielens
from tte_tfrs.data.bookcrossing import LAYOUTS, find_table, read_bookcrossing
from tte_tfrs.data.files import list_input_files
from tte_tfrs.data.movielens import read_movielens
from tte_tfrs.errors import DataError

DATASETS = ("auto", "kaggle", "bx", "movielens")


def full_schema(name):
    """(user features, item features) of data set family `name` with every side table present,
    or None for an unknown family."""
    if name == "book-crossing":
        return bookcrossing.user_features(), bookcrossing.item_features(with_books=True)
    if name == "movielens-100k":
        return movielens.user_features(), movielens.item_features()
    return None

def _default_data_dir():
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    checkout = os.path.join(os.path.dirname(package), "data", "book-crossing")
    if os.path.isdir(checkout):
        return checkout
    # A regular install carries the repository's data/ folder as the tte_tfrs.embedded package.
    return os.path.join(package, "embedded", "book-crossing")


DEFAULT_DATA_DIR = _default_data_dir()


def detect_layout(files):
    """Names the layouts present among `files`, most complete first (Kaggle before BX)."""
    found = []
    for layout, (ratings, _, _, _, _) in LAYOUTS.items():
        if find_table(files, ratings) is not None:
            found.append(layout)
    if "u.data" in files:
        found.append("movielens")
    return found


def load_dataset(path=None, dataset="auto"):
    """Reads a rating data set from a folder, a zip archive or a single ratings file.

    Args:
      path: where the files are; None means the embedded default data.
      dataset: ``auto`` (detect from the file names), ``kaggle`` (Books.csv, Users.csv,
        Ratings.csv or the Kaggle archive.zip), ``bx`` (BX-Books.csv, BX-Users.csv,
        BX-Book-Ratings.csv, optionally gzipped or zipped) or ``movielens`` (u.data, u.user, u.item).

    Returns:
      A `Dataset`; its ``report`` says what was read, kept and dropped. When several layouts are
      present, the choice is recorded as a report warning.

    Raises:
      DataError: nothing recognisable is in `path`, or a file cannot be used at all.
    """
    path, files, layout, present = choose_layout(path, dataset)
    if layout == "movielens":
        result = read_movielens(files, path)
    else:
        result = read_bookcrossing(files, layout, path)
    note_layouts(result.report, path, dataset, layout, present)
    result.report.counts.update(result.counts())
    return result


def choose_layout(path=None, dataset="auto"):
    """(path, files, layout, layouts present) of the data `load_dataset` would read.

    Raises:
      DataError: nothing recognisable is in `path`, or `dataset`'s files are not there.
    """
    if dataset not in DATASETS:
        raise DataError(path or DEFAULT_DATA_DIR, f"unknown dataset {dataset!r}; expected one of "
                        + ", ".join(DATASETS))
    path = os.path.expanduser(os.fspath(path)) if path is not None else DEFAULT_DATA_DIR
    files = list_input_files(path)
    present = detect_layout(files)
    if dataset == "auto":
        if not present:
            raise DataError(path, "holds no known data set: expected Ratings.csv (Kaggle), "
                            "BX-Book-Ratings.csv (original Book-Crossing) or u.data (MovieLens "
                            "100K), possibly inside a .zip; found " + (", ".join(sorted(files))
                                                                      or "no files"))
        layout = present[0]
    else:
        layout = dataset
        if layout not in present:
            raise DataError(path, f"--dataset={dataset} was asked for but its files are not there; "
                            "found " + (", ".join(sorted(files)) or "no files"))
    return path, files, layout, present


def note_layouts(report, path, dataset, layout, present):
    """Warns in `report` when `path` held several layouts and one was picked."""
    if dataset == "auto" and len(present) > 1:
        report.warn(f"{path} holds several layouts ({', '.join(present)}); read {layout}. "
                    "Pass --dataset to choose another.")
