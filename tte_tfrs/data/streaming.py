"""Data larger than memory: Book-Crossing files read in chunks, rows kept on disk.

`read_streamed` reads the ratings, users and books files a chunk at a time through the readers' own
cleaning (`tte_tfrs.data.bookcrossing.clean_*_table`, `tte_tfrs.data.files.iter_delimited`), so
every row is validated and counted exactly as `tte_tfrs.data.loader.load_dataset` does and the
`DataReport` is the same. File-wide decisions are taken after the chunks: duplicate (user, book)
pairs keep the last one (64-bit hashes of every pair find the candidates, which are then compared
exactly), duplicate users and books keep the first. The cleaned ratings wait on disk in chunk files
(`StreamedDataset.iter_ratings`); the users and books tables stay in memory (they grow with the
catalogue, not with the ratings).

`StreamedDataset.split` gives the same seeded split as `tte_tfrs.data.split.split_ratings` on the
same data (one permutation of the usable rows' positions), and `training_counts` the training rows'
ratings and how often each user and item occurs in them, from which the vocabularies are built.

Rows then go to sharded TFRecord files (`write_blocks` / `read_blocks`): each record is one block
of rows (a nested structure of tensors, ragged ones included, serialised whole), so reading costs a
few parses per batch rather than per example.

May import: tte_tfrs.data.
"""

from __future__ import annotations

import codecs
import dataclasses
import io
import os
import pickle
import shutil
import tempfile
import weakref
import zipfile
from collections.abc import Callable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import tensorflow as tf

from tte_tfrs.data import bookcrossing as bx
from tte_tfrs.data.dataset import fill_missing
from tte_tfrs.data.files import InputFile, iter_delimited
from tte_tfrs.data.loader import choose_layout, note_layouts
from tte_tfrs.data.report import DataReport, FileReport
from tte_tfrs.errors import DataError

CHUNK_ROWS = 1 << 18
TRAIN, VALIDATION, TEST, UNUSED = 0, 1, 2, 3
SPLIT_NAMES = ("train", "validation", "test")


def ratings_file_bytes(path: str | None, dataset: str = "auto") -> int | None:
    """Size of the ratings file `load_dataset` would read (None for MovieLens or when unknown)."""
    path, files, layout, _ = choose_layout(path, dataset)
    if layout == "movielens":
        return None
    return bx.find_tables(files, layout, path)[0].size()


@dataclasses.dataclass
class StreamedDataset:
    """A `tte_tfrs.data.dataset.Dataset` whose ratings stay on disk.

    It has the attributes and methods of a `Dataset` that training and export use, except
    ``ratings``: iterate them with `iter_ratings`.

    Attributes:
      users: the cleaned users table; items: the cleaned books table.
      rating_users: ids of users that have ratings but are not in the users table (first seen
        first); rating_items: the same for books.
      user_codes, item_codes: `pd.Index` of every id (table rows first, then the rating-only ids),
        whose positions are the codes `iter_ratings` gives.
      user_counts, item_counts: ratings per user and per item code.
    """

    name: str
    layout: str
    source: str
    users: pd.DataFrame
    items: pd.DataFrame
    user_features: tuple
    item_features: tuple
    rating_scale: tuple
    implicit_rating: float | None
    report: DataReport
    work_dir: str
    chunk_files: list
    dropped_lines: np.ndarray
    rating_users: list
    rating_items: list
    user_counts: np.ndarray
    item_counts: np.ndarray
    totals: dict
    folds: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        # The chunk files go when the data set does, if `close` was not called first.
        self._finalizer = weakref.finalize(self, shutil.rmtree, self.work_dir, True)

    @property
    def user_codes(self) -> pd.Series:
        """Every user id (as pandas strings), at the position of its code."""
        return _ids(self.users["user_id"], self.rating_users)

    @property
    def item_codes(self) -> pd.Series:
        """Every item id (as pandas strings), at the position of its code."""
        return _ids(self.items["item_id"], self.rating_items)

    def counts(self) -> dict:
        return dict(self.totals)

    def iter_ratings(self, codes: bool = False) -> Iterator[pd.DataFrame]:
        """The cleaned ratings (``user_id``, ``item_id``, ``rating``, ``line``) in file order, a
        chunk at a time, duplicates removed; with `codes`, also ``user_code`` and ``item_code``."""
        for path in self.chunk_files:
            with open(path, "rb") as f:
                frame = pickle.load(f)
            if len(self.dropped_lines):
                frame = frame[~np.isin(frame["line"].to_numpy(), self.dropped_lines)]
            yield frame if codes else frame.drop(columns=["user_code", "item_code"])

    def catalogue(self) -> pd.DataFrame:
        """Every known item (as `Dataset.catalogue`): the books table, then rating-only items."""
        extra = pd.DataFrame({"item_id": pd.Series(self.rating_items, dtype=str)})
        return fill_missing(pd.concat([self.items, extra], ignore_index=True), self.item_features)

    def known_users(self) -> pd.DataFrame:
        """Every known user with features (as the writer's users table): the users table, then the
        rating-only users sorted by id."""
        extra = pd.DataFrame({"user_id": pd.Series(sorted(self.rating_users), dtype=str)})
        return fill_missing(pd.concat([self.users, extra], ignore_index=True), self.user_features)

    def rated_items(self, item_ids: list) -> dict:
        """Who rated what, as `tte_tfrs.exports.writer.rated_items` gives it for the ratings: user
        ids (sorted), offsets, and each user's catalogue rows (sorted), built chunk by chunk."""
        codes = self.user_codes
        order = codes.argsort(kind="stable").to_numpy()
        rank = np.empty(len(codes), np.int64)
        rank[order] = np.arange(len(codes))
        # Catalogue row of each item code: Arrow's hash lookup (no Python string per id).
        row_of_code = pc.index_in(_arrow(self.item_codes), value_set=_arrow(item_ids))
        row_of_code = row_of_code.fill_null(-1).to_numpy().astype(np.int64)
        # One int64 key per rating, (user rank, catalogue row), sorted in place: the order of
        # np.lexsort((rows, users)) with a third of its memory. The keys go straight into one
        # array (pages past the last key are never touched, so never resident).
        n_rows = max(1, len(item_ids))
        keys = np.empty(max(1, self.totals["ratings"]), np.int64)
        count = 0
        for frame in self.iter_ratings(codes=True):
            item_rows = row_of_code[frame["item_code"].to_numpy()]
            known = item_rows >= 0
            part = rank[frame["user_code"].to_numpy()[known]] * n_rows + item_rows[known]
            if count + len(part) > len(keys):
                keys = np.concatenate([keys[:count], np.empty(count + len(part), np.int64)])
            keys[count:count + len(part)] = part
            count += len(part)
        keys = keys[:count]
        keys.sort()
        # Where each user rank's keys start (a binary search per rank, no array per key).
        bounds = np.searchsorted(keys, np.arange(len(codes) + 1, dtype=np.int64) * n_rows)
        present = np.flatnonzero(np.diff(bounds))
        starts = bounds[present]
        rows = np.remainder(keys, n_rows, out=keys)
        width = max(1, int(codes.str.len().max())) if len(codes) else 1
        ids = np.empty(len(present), f"<U{width}")
        for start in range(0, len(present), 1 << 16):      # a slice of Python strings at a time
            chosen = order[present[start:start + (1 << 16)]]
            ids[start:start + len(chosen)] = codes.iloc[chosen].to_numpy(dtype=object)
        return {"user_ids": ids, "offsets": np.append(starts, len(rows)).astype(np.int64),
                "rows": rows}

    def export_users(self, item_ids: list) -> tuple[pd.DataFrame, dict]:
        """(users table, who rated what) of an export, computed from the chunks."""
        return self.known_users(), self.rated_items(item_ids)

    def usable(self, frame: pd.DataFrame, include_implicit: bool) -> np.ndarray:
        if include_implicit or self.implicit_rating is None:
            return np.ones(len(frame), dtype=bool)
        return frame["rating"].to_numpy() != self.implicit_rating

    def split(self, validation_fraction: float, test_fraction: float, include_implicit: bool,
              seed: int) -> np.ndarray:
        """The split of every usable rating in file order (TRAIN, VALIDATION or TEST), the same as
        `split_ratings` gives for the random split."""
        n = self.totals["ratings"] if include_implicit else self.totals["explicit_ratings"]
        order = np.random.default_rng(seed).permutation(n)
        n_test = int(round(test_fraction * n))
        n_val = int(round(validation_fraction * n))
        labels = np.full(n, TRAIN, dtype=np.uint8)
        labels[order[:n_test]] = TEST
        labels[order[n_test:n_test + n_val]] = VALIDATION
        return labels

    def close(self) -> None:
        """Deletes the chunk files."""
        self._finalizer()


def _ids(table_ids, extra_ids):
    return pd.concat([table_ids.astype(str), pd.Series(extra_ids, dtype=str)], ignore_index=True)


def _arrow(values):
    """`values` (pandas strings, or a list of str) as one Arrow string array."""
    if isinstance(values, pd.Series):
        values = values.astype(str).array
    array = pa.array(values)
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    return array.cast(pa.large_string())


def read_streamed(path: str | None = None, dataset: str = "auto", work_dir: str | None = None,
                  chunk_rows: int = CHUNK_ROWS) -> StreamedDataset:
    """Reads a Book-Crossing data set a chunk at a time (see the module docstring).

    Args:
      path, dataset: as for `tte_tfrs.data.loader.load_dataset`.
      work_dir: where the cleaned rating chunks are kept (a new temporary folder inside it; the
        system's temporary folder when None).
      chunk_rows: rows per chunk.

    Raises:
      DataError: as `load_dataset`; MovieLens is read in memory only.
    """
    path, files, layout, present = choose_layout(path, dataset)
    if layout == "movielens":
        raise DataError(path, "MovieLens 100K is read in memory; streaming reads the "
                        "Book-Crossing layouts (use --input_mode=memory)")
    ratings_file, users_file, books_file, sep, escape = bx.find_tables(files, layout, path)
    report = DataReport()
    item_specs = bx.item_features(books_file is not None)
    if work_dir:
        os.makedirs(work_dir, exist_ok=True)
    work = tempfile.mkdtemp(prefix="tte-stream-", dir=work_dir)
    try:
        chunk_files, dropped = _read_ratings(ratings_file, sep, escape, report, item_specs[0],
                                             work, chunk_rows)
        if users_file is not None:
            users = _read_table(users_file, bx.USERS_COLUMNS, sep, escape, report, chunk_rows,
                                lambda frame, file_report, dedup: bx.clean_users_table(
                                    frame, file_report, dedup))
        else:
            users = pd.DataFrame({"user_id": pd.Series([], dtype=str)})
            report.warn(bx.MISSING_USERS.format(source=path))
        if books_file is not None:
            items = _read_table(books_file, bx.BOOKS_COLUMNS, sep, escape, report, chunk_rows,
                                lambda frame, file_report, dedup: bx.clean_books_table(
                                    frame, books_file.display, file_report, item_specs, dedup))
        else:
            items = pd.DataFrame({"item_id": pd.Series([], dtype=str)})
            report.warn(bx.MISSING_BOOKS.format(source=path))
        result = StreamedDataset(
            name="book-crossing", layout=layout, source=str(path), users=users.reset_index(drop=True),
            items=items.reset_index(drop=True), user_features=bx.user_features(),
            item_features=item_specs, rating_scale=bx.RATING_SCALE,
            implicit_rating=bx.IMPLICIT_RATING, report=report, work_dir=work,
            chunk_files=chunk_files, dropped_lines=dropped, rating_users=[], rating_items=[],
            user_counts=np.zeros(0, np.int64), item_counts=np.zeros(0, np.int64), totals={})
        _count(result, users_file is not None, books_file is not None)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    note_layouts(report, path, dataset, layout, present)
    report.counts.update(result.counts())
    return result


def _read_ratings(input_file, sep, escape, report, item_spec, work, chunk_rows):
    file_report = report.add_file(input_file.display)
    last = _KeepLast()
    chunk_files = []
    for frame in _chunks(input_file, bx.RATINGS_COLUMNS, sep, escape, file_report, chunk_rows):
        kept = bx.clean_ratings_table(frame, input_file.display, file_report, item_spec, last)
        chunk_path = os.path.join(work, f"ratings-{len(chunk_files):05d}.pkl")
        with open(chunk_path, "wb") as f:
            pickle.dump(kept.reset_index(drop=True), f, protocol=pickle.HIGHEST_PROTOCOL)
        chunk_files.append(chunk_path)
    dropped = last.finish(chunk_files)
    kept_rows = sum(last.rows) - len(dropped)
    if last.reason is not None:
        file_report.drop(last.reason, dropped)
    file_report.rows_kept = kept_rows
    return chunk_files, dropped


class _KeepLast:
    """The ``dedup`` of the ratings chunks: records a 64-bit hash and the line of every row; after
    the last chunk, `finish` finds the rows whose pair appears again later (compared exactly)."""

    def __init__(self):
        self.hashes, self.lines, self.rows = [], [], []
        self.keys = self.reason = None

    def __call__(self, frame, keys, report, reason, keep="last"):
        if keep != "last":
            raise ValueError("ratings duplicates keep the last row")
        self.keys, self.reason = list(keys), reason
        self.hashes.append(pd.util.hash_pandas_object(frame[self.keys], index=False).to_numpy())
        self.lines.append(frame["line"].to_numpy())
        self.rows.append(len(frame))
        return frame

    def finish(self, chunk_files):
        if not self.hashes:
            return np.zeros(0, np.int64)
        hashes = np.concatenate(self.hashes)
        lines = np.concatenate(self.lines)
        self.hashes = self.lines = None
        order = np.argsort(hashes, kind="stable")
        same = hashes[order][1:] == hashes[order][:-1]
        candidate = np.zeros(len(order), dtype=bool)
        candidate[1:] |= same
        candidate[:-1] |= same
        candidates = np.sort(lines[order[candidate]])
        if not len(candidates):
            return np.zeros(0, np.int64)
        frames = []
        for path in chunk_files:
            with open(path, "rb") as f:
                frame = pickle.load(f)
            frames.append(frame[np.isin(frame["line"].to_numpy(), candidates)])
        frame = pd.concat(frames, ignore_index=True)
        return np.sort(frame["line"].to_numpy()[frame.duplicated(self.keys, keep="last").to_numpy()])


class _KeepFirst:
    """The ``dedup`` of a side table's chunks: a row whose key was seen in this or an earlier chunk
    is dropped (the first one is kept), counted under the reader's reason."""

    def __init__(self):
        self.seen = set()

    def __call__(self, frame, keys, report, reason, keep="first"):
        if keep != "first":
            raise ValueError("side-table duplicates keep the first row")
        (key,) = keys
        values = frame[key]
        seen = np.fromiter((v in self.seen for v in values), dtype=bool, count=len(values))
        repeated = values.duplicated(keep="first").to_numpy() | seen
        report.drop(reason, frame["line"].to_numpy()[repeated])
        frame = frame[~repeated]
        self.seen.update(frame[key].tolist())
        return frame


def _read_table(input_file, columns, sep, escape, report, chunk_rows, clean):
    file_report = report.add_file(input_file.display)
    first = _KeepFirst()
    parts, rows = [], 0
    for frame in _chunks(input_file, columns, sep, escape, file_report, chunk_rows):
        parts.append(clean(frame, file_report, first))
        rows += len(parts[-1])
    file_report.rows_kept = rows
    if not parts:
        return clean(bx.table_frame([[] for _ in columns], [], columns), FileReport("-"), first)
    return pd.concat(parts, ignore_index=True)


def _chunks(input_file: InputFile, columns, sep, escape, file_report, chunk_rows):
    """The raw table of `input_file` in frames of `chunk_rows` rows, decoded as `decode_text` does
    (UTF-8, else latin-1 for the whole file; a byte-order mark and NUL characters removed)."""
    encoding, skip = _encoding(input_file, file_report)
    try:
        with input_file.stream_opener() as raw:
            raw.read(skip)
            text = io.TextIOWrapper(raw, encoding=encoding, newline="")
            for values, lines in iter_delimited(_without_nul(text), input_file, file_report,
                                                columns, sep, escape, chunk_rows=chunk_rows):
                yield bx.table_frame(values, lines, columns)
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(input_file.display, f"cannot be read ({exc}); is the file complete?") \
            from exc


def _without_nul(lines):
    for line in lines:
        yield line.replace("\x00", "") if "\x00" in line else line


def _encoding(input_file, file_report, preferred="utf-8", block=1 << 24):
    """(encoding, bytes to skip) of a file, with `decode_text`'s notes: one pass checks that the
    whole file is valid `preferred` and counts NUL characters."""
    decoder = codecs.getincrementaldecoder(preferred)()
    bad_at, offset, nul = None, 0, 0
    try:
        with input_file.stream_opener() as raw:
            data = raw.read(3)
            skip = 3 if data == b"\xef\xbb\xbf" else 0
            data = data[skip:]
            while data:
                nul += data.count(b"\x00")
                if bad_at is None:
                    pending = len(decoder.getstate()[0])
                    try:
                        decoder.decode(data)
                    except UnicodeDecodeError as exc:
                        bad_at = offset - pending + exc.start
                offset += len(data)
                data = raw.read(block)
            if bad_at is None:
                try:
                    decoder.decode(b"", final=True)
                except UnicodeDecodeError as exc:
                    bad_at = offset - len(decoder.getstate()[0]) + exc.start
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(input_file.display, f"cannot be read ({exc}); is the file complete?") \
            from exc
    encoding = preferred
    if bad_at is not None:
        encoding = "latin-1"
        file_report.notes.append(
            f"not valid {preferred} (first bad byte at offset {bad_at}); decoded as latin-1")
    if nul:
        file_report.notes.append(f"removed {nul} NUL characters")
    return encoding, skip


def _count(data: StreamedDataset, with_users: bool, with_books: bool) -> None:
    """Codes every rating's user and item (table row, or a rating-only id after the table) into the
    chunk files, and fills the counts `Dataset.counts` and the readers report."""
    user_index = pd.Index(data.users["user_id"], dtype=object)
    item_index = pd.Index(data.items["item_id"], dtype=object)
    user_extra, item_extra = {}, {}
    user_counts = np.zeros(len(user_index), np.int64)
    item_counts = np.zeros(len(item_index), np.int64)
    explicit = total = 0
    for path in data.chunk_files:
        with open(path, "rb") as f:
            frame = pickle.load(f)
        keep = ~np.isin(frame["line"].to_numpy(), data.dropped_lines)
        user_code = _codes(user_index, user_extra, frame["user_id"].to_numpy(), keep)
        item_code = _codes(item_index, item_extra, frame["item_id"].to_numpy(), keep)
        frame = frame.assign(user_code=user_code, item_code=item_code)
        with open(path, "wb") as f:
            pickle.dump(frame, f, protocol=pickle.HIGHEST_PROTOCOL)
        user_counts = _add_counts(user_counts, user_code[keep])
        item_counts = _add_counts(item_counts, item_code[keep])
        total += int(keep.sum())
        if data.implicit_rating is None:
            explicit += int(keep.sum())
        else:
            explicit += int((keep & (frame["rating"].to_numpy() != data.implicit_rating)).sum())
    data.rating_users, data.rating_items = list(user_extra), list(item_extra)
    data.user_counts, data.item_counts = user_counts, item_counts
    if with_users:
        data.report.counts[bx.UNKNOWN_USERS] = int(user_counts[len(user_index):].sum())
    if with_books:
        data.report.counts[bx.UNKNOWN_ITEMS] = int(item_counts[len(item_index):].sum())
    data.totals = {
        "ratings": total, "explicit_ratings": explicit, "implicit_ratings": total - explicit,
        "users_rating": int((user_counts > 0).sum()), "items_rated": int((item_counts > 0).sum()),
        "users_table": len(user_index), "items_table": len(item_index)}


def _codes(index, extra, ids, keep):
    """Positions of `ids` in `index`, then in `extra` (ids not in the table, numbered after it, in
    the order first seen among the kept rows)."""
    codes = index.get_indexer(ids)
    missing = np.flatnonzero(codes < 0)
    base = len(index)
    for position in missing:
        value = ids[position]
        code = extra.get(value)
        if code is None:
            if not keep[position]:
                continue
            code = extra[value] = len(extra)
        codes[position] = base + code
    return codes


def _add_counts(counts, codes):
    found = np.bincount(codes[codes >= 0], minlength=len(counts))
    if len(found) > len(counts):
        counts = np.concatenate([counts, np.zeros(len(found) - len(counts), np.int64)])
    return counts + found


# ---------------------------------------------------------------------------------------------
# Blocks of rows in TFRecord files.

def block_spec(block) -> object:
    """The nested `tf.TypeSpec` of blocks like `block` (a nested dict of tensors, ragged ones
    included), any number of rows."""
    return tf.nest.map_structure(_any_rows, block)


def _any_rows(tensor):
    if isinstance(tensor, tf.RaggedTensor):
        return tf.RaggedTensorSpec([None] + tensor.shape[1:].as_list(), tensor.dtype,
                                   tensor.ragged_rank, tensor.row_splits.dtype)
    return tf.TensorSpec([None] + tensor.shape[1:].as_list(), tensor.dtype)


def encode_block(block) -> bytes:
    """One record: every component tensor of `block` serialised, the list serialised again."""
    parts = [tf.io.serialize_tensor(t) for t in tf.nest.flatten(block, expand_composites=True)]
    return tf.io.serialize_tensor(tf.stack(parts)).numpy()


def decoder_for(spec) -> Callable[[tf.Tensor], object]:
    """record -> the block it encodes, for blocks of `spec` (a graph function for tf.data)."""
    components = tf.nest.flatten(spec, expand_composites=True)

    def decode(record):
        parts = tf.io.parse_tensor(record, tf.string)
        tensors = []
        for n, component in enumerate(components):
            tensor = tf.io.parse_tensor(parts[n], component.dtype)
            tensor.set_shape(component.shape)
            tensors.append(tensor)
        return tf.nest.pack_sequence_as(spec, tensors, expand_composites=True)

    return decode


def read_blocks(files: list, spec, shuffle: bool = False, seed: int = 0, repeat: bool = False,
                shuffle_blocks: int = 64) -> tf.data.Dataset:
    """A dataset of the blocks stored in `files`, each block one element (a batch).

    With `shuffle`, the order of the files and of the blocks (within a buffer of
    `shuffle_blocks`) is drawn afresh every epoch from `seed`; a block's rows stay together, so
    rows are written in a random order to begin with.
    """
    files = files if isinstance(files, tf.Tensor) else tf.constant(list(files), tf.string)
    count = int(files.shape[0]) if files.shape[0] is not None else 4
    data = tf.data.Dataset.from_tensor_slices(files)
    if shuffle:
        data = data.shuffle(count, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        data = data.repeat()
    data = data.interleave(tf.data.TFRecordDataset, cycle_length=min(4, max(1, count)),
                           num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if shuffle:
        data = data.shuffle(shuffle_blocks, seed=seed + 1, reshuffle_each_iteration=True)
    data = data.map(decoder_for(spec), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    options = tf.data.Options()
    options.deterministic = True
    return data.with_options(options).prefetch(tf.data.AUTOTUNE)


def read_file_blocks(path, spec) -> tf.data.Dataset:
    """The blocks of one file (`path` may be a string tensor, e.g. inside a tf.function)."""
    return tf.data.TFRecordDataset(path).map(decoder_for(spec))


def take_rows(block, rows) -> object:
    """The rows `rows` (an integer array) of a block."""
    rows = tf.constant(rows, tf.int64)
    return tf.nest.map_structure(lambda t: tf.gather(t, rows), block)


def block_rows(block) -> int:
    first = tf.nest.flatten(block)[0]
    return int(first.nrows() if isinstance(first, tf.RaggedTensor) else first.shape[0])
