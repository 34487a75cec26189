"""Readers for Book-Crossing: the Kaggle download and the original BX files."""

import numpy as np
import pandas as pd

from tte_tfrs.data import cleaning, features
from tte_tfrs.data.dataset import Dataset
from tte_tfrs.data.features import FeatureSpec
from tte_tfrs.data.files import decode_text, parse_delimited
from tte_tfrs.data.report import DataReport
from tte_tfrs.errors import DataError

RATINGS_COLUMNS = ("User-ID", "ISBN", "Book-Rating")
USERS_COLUMNS = ("User-ID", "Location", "Age")
BOOKS_COLUMNS = ("ISBN", "Book-Title", "Book-Author", "Year-Of-Publication", "Publisher",
                 "Image-URL-S", "Image-URL-M", "Image-URL-L")

RATING_SCALE = (0.0, 10.0)
IMPLICIT_RATING = 0.0
AGE_BOUNDARIES = (4.0, 12.0, 16.0, 18.0, 21.0, 25.0, 30.0, 35.0, 40.0, 45.0, 50.0, 55.0, 60.0, 65.0,
                  100.0)

LAYOUTS = {
    # layout: (file name prefixes for ratings, users, books; separator; escape character)
    "kaggle": (("ratings",), ("users",), ("books",), ",", None),
    "bx": (("bx-book-ratings",), ("bx-users",), ("bx-books",), ";", "\\"),
}


# Publication years after this one count as unknown. A constant, not today's year: the same data
# and config must give the same model next year too.
LATEST_YEAR = 2026.0
YEAR_BOUNDARIES = (1000.0, 1900.0, 1950.0, 1960.0, 1970.0, 1980.0, 1985.0, 1990.0, 1993.0, 1996.0,
                   1998.0, 2000.0, 2002.0, 2004.0, LATEST_YEAR)


def user_features():
    return (
        FeatureSpec("user_id", "id", "Book-Crossing User-ID"),
        FeatureSpec("location", "location", '"city, state, country" as in Users.csv'),
        FeatureSpec("age", "number", "age in years; NaN or 0 when unknown", AGE_BOUNDARIES),
    )


def item_features(with_books):
    specs = [FeatureSpec("item_id", "id", "ISBN (upper-cased, only letters and digits kept)",
                         normalize="isbn")]
    if with_books:
        specs += [
            FeatureSpec("title", "text", "Book-Title"),
            FeatureSpec("author", "category", "Book-Author"),
            FeatureSpec("publisher", "category", "Publisher"),
            FeatureSpec("year", "number", "Year-Of-Publication; NaN or 0 when unknown",
                        YEAR_BOUNDARIES),
        ]
    return tuple(specs)


def find_table(files, prefixes, extension=".csv"):
    """The file whose bare name starts with one of `prefixes` and ends with `extension`, or None."""
    for prefix in prefixes:
        for name in sorted(files):
            if name.startswith(prefix) and name.endswith(extension):
                return files[name]
    return None


MISSING_USERS = "no users file in {source}: the user tower uses the user id alone"
MISSING_BOOKS = ("no books file in {source} (Books.csv / BX-Books.csv): the item tower uses the "
                 "ISBN alone and recommendations have no titles")
UNKNOWN_USERS = "ratings whose user is not in the users table (kept)"
UNKNOWN_ITEMS = "ratings whose ISBN is not in the books table (kept)"


def find_tables(files, layout, source):
    """(ratings file, users file or None, books file or None, separator, escape) of a layout.

    Raises:
      DataError: there is no ratings file.
    """
    ratings_prefixes, users_prefixes, books_prefixes, sep, escape = LAYOUTS[layout]
    ratings_file = find_table(files, ratings_prefixes)
    if ratings_file is None:
        raise DataError(source, f"no ratings file found (expected {ratings_prefixes[0]}*.csv, "
                        "optionally .gz or inside a .zip)")
    return (ratings_file, find_table(files, users_prefixes), find_table(files, books_prefixes),
            sep, escape)


def read_bookcrossing(files, layout, source):
    """Reads a Book-Crossing data set.

    Args:
      files: the dict from `list_input_files`.
      layout: ``kaggle`` (Books.csv, Users.csv, Ratings.csv: comma-separated UTF-8) or ``bx``
        (BX-Books.csv, BX-Users.csv, BX-Book-Ratings.csv: ';'-separated latin-1, '\\' escapes).
      source: the path the files came from, for the report.

    Returns:
      A `Dataset`. Ratings keep the implicit zeros; training decides whether to use them.

    Raises:
      DataError: no ratings file, or a file that cannot be used at all.
    """
    ratings_file, users_file, books_file, sep, escape = find_tables(files, layout, source)
    report = DataReport()
    item_specs = item_features(books_file is not None)
    ratings = _read_ratings(ratings_file, sep, escape, report, item_specs[0])
    if users_file is not None:
        users = _read_users(users_file, sep, escape, report)
    else:
        users = pd.DataFrame({"user_id": pd.Series([], dtype=str)})
        report.warn(MISSING_USERS.format(source=source))
    if books_file is not None:
        items = _read_books(books_file, sep, escape, report, item_specs)
    else:
        items = pd.DataFrame({"item_id": pd.Series([], dtype=str)})
        report.warn(MISSING_BOOKS.format(source=source))

    if users_file is not None:
        unknown_users = ~ratings["user_id"].isin(users["user_id"])
        report.counts[UNKNOWN_USERS] = int(unknown_users.sum())
    if books_file is not None:
        unknown_items = ~ratings["item_id"].isin(items["item_id"])
        report.counts[UNKNOWN_ITEMS] = int(unknown_items.sum())

    return Dataset(
        name="book-crossing", layout=layout, source=str(source),
        ratings=ratings.reset_index(drop=True), users=users.reset_index(drop=True),
        items=items.reset_index(drop=True), user_features=user_features(),
        item_features=item_specs, rating_scale=RATING_SCALE, implicit_rating=IMPLICIT_RATING,
        report=report)


def _read(input_file, columns, sep, escape, report):
    file_report = report.add_file(input_file.display)
    text = decode_text(input_file.read_bytes(), file_report)
    values, lines = parse_delimited(text, input_file, file_report, columns, sep, escape)
    return table_frame(values, lines, columns), file_report


def table_frame(values, lines, columns):
    """The raw table (strings) of parsed `values` with their file `lines`."""
    frame = pd.DataFrame({name: pd.Series(col, dtype=object) for name, col in zip(columns, values)})
    frame["line"] = np.asarray(lines, dtype=np.int64)
    return frame


# The cleaning of each table, whole or (tte_tfrs.data.streaming) one chunk at a time: `dedup`
# (cleaning.drop_duplicates by default) is where a chunked reader sees every file-wide decision.

def _read_ratings(input_file, sep, escape, report, item_spec):
    frame, file_report = _read(input_file, RATINGS_COLUMNS, sep, escape, report)
    return clean_ratings_table(frame, input_file.display, file_report, item_spec)


def clean_ratings_table(frame, display, file_report, item_spec, dedup=cleaning.drop_duplicates):
    frame = frame.rename(columns={"User-ID": "user_id", "ISBN": "item_id", "Book-Rating": "rating"})
    frame = cleaning.clean_ratings(frame, display, file_report, RATINGS_COLUMNS, RATING_SCALE)
    bad_id = ~frame["user_id"].str.fullmatch(r"\d+").to_numpy(dtype=bool)
    file_report.drop("User-ID is not a whole number", frame["line"].to_numpy()[bad_id])
    frame = frame[~bad_id]
    frame = cleaning.normalize_item_ids(frame, item_spec, display, file_report, "ISBN")
    frame = dedup(frame, ["user_id", "item_id"], file_report,
                  "duplicate (User-ID, ISBN) pair; the last one is kept")
    file_report.rows_kept = len(frame)
    return frame[["user_id", "item_id", "rating", "line"]]


def _read_users(input_file, sep, escape, report):
    frame, file_report = _read(input_file, USERS_COLUMNS, sep, escape, report)
    return clean_users_table(frame, file_report)


def clean_users_table(frame, file_report, dedup=cleaning.drop_duplicates):
    frame = frame.rename(columns={"User-ID": "user_id", "Location": "location", "Age": "age"})
    frame = cleaning.clean_ids(frame, "user_id", "", file_report, "User-ID")
    bad_id = ~frame["user_id"].str.fullmatch(r"\d+").to_numpy(dtype=bool)
    file_report.drop("User-ID is not a whole number", frame["line"].to_numpy()[bad_id])
    frame = frame[~bad_id]
    frame = dedup(frame, ["user_id"], file_report, "duplicate User-ID; the first one is kept",
                  keep="first")
    spec = {s.name: s for s in user_features()}
    frame["age"] = cleaning.clean_number(frame, "age", spec["age"], file_report, "Age")
    frame["location"] = frame["location"].astype(str).str.strip()
    country = features.standardize_column(spec["location"], frame["location"])["location/country"]
    file_report.fix("Location has no country -> unknown", frame["line"].to_numpy()[country == ""])
    file_report.rows_kept = len(frame)
    return frame[["user_id", "location", "age"]]


def _read_books(input_file, sep, escape, report, item_specs):
    frame, file_report = _read(input_file, BOOKS_COLUMNS, sep, escape, report)
    return clean_books_table(frame, input_file.display, file_report, item_specs)


def clean_books_table(frame, display, file_report, item_specs, dedup=cleaning.drop_duplicates):
    frame = frame.rename(columns={"ISBN": "item_id", "Book-Title": "title", "Book-Author": "author",
                                  "Year-Of-Publication": "year", "Publisher": "publisher"})
    spec = {s.name: s for s in item_specs}
    frame = cleaning.normalize_item_ids(frame, spec["item_id"], display, file_report, "ISBN")
    frame = dedup(frame, ["item_id"], file_report, "duplicate ISBN; the first one is kept",
                  keep="first")
    for column, label in (("title", "Book-Title"), ("author", "Book-Author"),
                          ("publisher", "Publisher")):
        frame[column] = cleaning.clean_text(frame, column, file_report, label)
    shifted = frame["publisher"].str.startswith("http").to_numpy()
    file_report.fix("Publisher is a URL (columns shifted by a quote in the title) -> unknown",
                    frame["line"].to_numpy()[shifted])
    frame.loc[shifted, "publisher"] = ""
    frame["year"] = cleaning.clean_number(frame, "year", spec["year"], file_report,
                                          "Year-Of-Publication")
    file_report.rows_kept = len(frame)
    return frame[["item_id", "title", "author", "publisher", "year"]]
