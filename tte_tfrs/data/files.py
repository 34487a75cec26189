"""Finds input files in a folder or zip archive and decodes them to text.

The parsing here is row by row (`parse_delimited` over any iterable of lines), so a streaming reader
can run the same checks on a chunk of rows: fields longer than `MAX_FIELD_CHARS` drop their row,
a record that runs over more than `MAX_RECORD_LINES` lines (an unterminated quote swallowing the
lines after it) drops those lines with the line where it started, and a field longer than the
parser's limit stops the file with that line.
"""

import csv
import dataclasses
import gzip
import io
import os
import zipfile
import zlib

from tte_tfrs.errors import DataError

# No field of a rating data set is this long; a longer one is counted as a malformed line.
MAX_FIELD_CHARS = 4096
# The csv parser refuses fields longer than this: such a field stops the file with its line.
PARSER_FIELD_LIMIT = 1 << 20
# A record spanning more lines than this is a quote that swallowed the lines after it.
MAX_RECORD_LINES = 10

csv.field_size_limit(PARSER_FIELD_LIMIT)
# What reading a damaged file or archive member can raise: a truncated gzip (EOFError), a corrupt
# deflate stream (zlib.error), an encrypted member (RuntimeError), an unsupported compression
# method (NotImplementedError).
READ_ERRORS = (OSError, zipfile.BadZipFile, EOFError, zlib.error, RuntimeError, NotImplementedError,
               ValueError)


@dataclasses.dataclass(frozen=True)
class InputFile:
    """One readable table file.

    Attributes:
      display: how messages name the file (``/d/archive.zip:Ratings.csv``).
      name: the bare table name, lower case, compression suffixes removed (``ratings.csv``).
      opener: returns the raw (decompressed) bytes.
    """

    display: str
    name: str
    opener: object
    in_archive: bool = False
    stream_opener: object = None        # returns a binary file object (reading in chunks)

    def read_bytes(self):
        try:
            return self.opener()
        except READ_ERRORS as exc:
            raise DataError(self.display, f"cannot be read ({type(exc).__name__}: {exc}); is the "
                            "file complete and not damaged?") from None

    def size(self):
        """Uncompressed size in bytes (a gzip file: its compressed size), or None."""
        return self.stream_opener.size if self.stream_opener is not None else None


def _bare_name(name):
    name = os.path.basename(name).lower()
    for suffix in (".gz", ".zip"):
        if name.endswith(suffix) and name[: -len(suffix)].endswith((".csv", ".data", ".user", ".item")):
            name = name[: -len(suffix)]
    return name


def _zip_members(zip_path, display_prefix):
    try:
        archive = zipfile.ZipFile(zip_path)
    except READ_ERRORS as exc:
        raise DataError(zip_path, f"is not a readable zip archive ({exc})") from None
    with archive:
        names = [n for n in archive.namelist() if not n.endswith("/") and not n.startswith("__MACOSX")]
        sizes = {info.filename: info.file_size for info in archive.infolist()}
    found = []
    for member in names:
        def opener(member=member):
            with zipfile.ZipFile(zip_path) as z:
                return z.read(member)
        stream = _Stream(lambda member=member: _open_member(zip_path, member), sizes.get(member))
        found.append(InputFile(f"{display_prefix}:{member}", _bare_name(member), opener, True,
                               stream))
    return found


@dataclasses.dataclass(frozen=True)
class _Stream:
    """Opens a file for reading in chunks; `size` is its (uncompressed, when known) byte count."""

    open: object
    size: int | None

    def __call__(self):
        return self.open()


def _open_member(zip_path, member):
    archive = zipfile.ZipFile(zip_path)
    stream = archive.open(member)
    stream.archive = archive        # keeps the archive open as long as the member is read
    return stream


def list_input_files(path):
    """Lists the table files in `path`: a folder, a zip archive, or a single (optionally gzipped) file.

    Zip archives inside a folder (the Kaggle ``archive.zip``, ``BX-Books.csv.zip``) are opened and their
    members listed. Gzipped files are listed under their uncompressed name.

    Returns:
      A dict from bare lower-case file name (``ratings.csv``) to `InputFile`. Plain files win over
      archive members of the same name.

    Raises:
      DataError: `path` does not exist.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataError(path, "does not exist; pass --data_dir pointing at a data folder or zip archive")
    entries = []
    if os.path.isdir(path):
        try:
            names = sorted(os.listdir(path))
        except OSError as exc:
            raise DataError(path, f"cannot be listed ({exc.strerror})") from None
        for entry in names:
            full = os.path.join(path, entry)
            if os.path.isfile(full):
                entries.extend(_entries_for_file(full))
    elif os.path.isfile(path):
        entries.extend(_entries_for_file(path))
    else:
        raise DataError(path, "is neither a folder nor a regular file (a device or a pipe?); pass "
                        "--data_dir pointing at a data folder or zip archive")
    found = {item.name: item for item in entries if item.in_archive}
    found.update({item.name: item for item in entries if not item.in_archive})
    return found


def _entries_for_file(full):
    lower = full.lower()
    if lower.endswith(".zip"):
        return _zip_members(full, full)
    if lower.endswith(".gz"):
        def opener(full=full):
            with gzip.open(full, "rb") as f:
                return f.read()
        stream = _Stream(lambda: gzip.open(full, "rb"), os.path.getsize(full))
        return [InputFile(full, _bare_name(full), opener, stream_opener=stream)]

    def opener(full=full):
        with open(full, "rb") as f:
            return f.read()
    stream = _Stream(lambda: open(full, "rb"), os.path.getsize(full))
    return [InputFile(full, _bare_name(full), opener, stream_opener=stream)]


def decode_text(data, file_report, preferred="utf-8"):
    """Decodes bytes as `preferred` (UTF-8 by default), falling back to latin-1.

    Latin-1 decodes any byte sequence, so this never fails; the fallback is recorded in the report.
    NUL bytes, which the csv module refuses, are removed and counted.
    """
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode(preferred)
    except UnicodeDecodeError as exc:
        text = data.decode("latin-1")
        file_report.notes.append(
            f"not valid {preferred} (first bad byte at offset {exc.start}); decoded as latin-1")
    if "\x00" in text:
        file_report.notes.append(f"removed {text.count(chr(0))} NUL characters")
        text = text.replace("\x00", "")
    return text


def parse_delimited(text, input_file, file_report, expected_header, delimiter, escapechar=None,
                    has_header=True):
    """Parses delimited text into columns of strings, keeping exact file line numbers.

    Args:
      text: decoded file contents.
      input_file: the `InputFile`, for messages.
      file_report: `FileReport` that receives the counts.
      expected_header: the column names the file must have, in order (compared ignoring case,
        spaces, hyphens and underscores). Without a header row, the number of fields expected.
      delimiter: field separator.
      escapechar: escape character inside quoted fields (``\\`` for the original BX files).
      has_header: whether the first row is a header.

    Returns:
      (columns, lines): a list of lists of strings, one per expected column, and the 1-based line
      number on which each kept row ends.

    Raises:
      DataError: the header does not match, naming the file, line 1 and the expected columns; or a
        field longer than the parser's limit (an unterminated quote), naming the line it starts on.
    """
    chunks = iter_delimited(io.StringIO(text, newline=""), input_file, file_report,
                            expected_header, delimiter, escapechar, has_header)
    return next(chunks)


def iter_delimited(lines, input_file, file_report, expected_header, delimiter, escapechar=None,
                   has_header=True, chunk_rows=None):
    """`parse_delimited` over an iterable of text lines, yielding (columns, lines) chunks of at
    most `chunk_rows` rows (all rows in one chunk when None); counts go to `file_report` as the
    chunks are read, so a file read in chunks is reported exactly as one read whole.

    Raises:
      DataError: the header does not match, naming the file, line 1 and the expected columns.
    """
    reader = csv.reader(lines, delimiter=delimiter, quotechar='"',
                        escapechar=escapechar, doublequote=True, strict=False)
    width = len(expected_header)
    if has_header:
        header = _next_row(reader, input_file)
        if header is None:
            raise DataError(input_file.display, "is empty; expected a header row "
                            + delimiter.join(expected_header), line=1)
        if [_norm(h) for h in header] != [_norm(h) for h in expected_header]:
            raise DataError(
                input_file.display,
                f"expected the columns {delimiter.join(expected_header)[:300]!r} "
                f"(separated by {delimiter!r}), found {delimiter.join(header)[:300]!r}",
                line=1)
    while True:
        columns = [[] for _ in range(width)]
        lines_kept = []
        bad_lines, long_lines, swallowed = [], [], []
        while True:
            start = reader.line_num + 1
            row = _next_row(reader, input_file)
            if row is None:
                break
            end = reader.line_num
            if end - start + 1 > MAX_RECORD_LINES:
                swallowed.extend(range(start, end + 1))
            elif len(row) == width:
                if max(map(len, row)) > MAX_FIELD_CHARS:
                    long_lines.append(end)
                else:
                    for column, value in zip(columns, row):
                        column.append(value)
                    lines_kept.append(end)
            elif row and any(field.strip() for field in row):
                bad_lines.append(end)
            if chunk_rows is not None and len(lines_kept) >= chunk_rows:
                break
        file_report.rows_read += len(lines_kept) + len(bad_lines) + len(long_lines) + len(swallowed)
        file_report.drop(f"malformed line (expected {width} fields)", bad_lines)
        file_report.drop(f"a field longer than {MAX_FIELD_CHARS:,} characters", long_lines)
        if swallowed:
            file_report.drop(f"lines swallowed by a record that runs on from line {swallowed[0]} "
                             "(an unterminated quote?)", swallowed)
        if chunk_rows is not None and not lines_kept:      # the end of the file
            return
        yield columns, lines_kept
        if chunk_rows is None:
            return


def _next_row(reader, input_file):
    """The next row of a csv reader, or None at the end.

    Raises:
      DataError: the parser gave up (a field longer than its limit: a quote that never closes),
        naming the line where the record started.
    """
    start = reader.line_num + 1
    try:
        return next(reader)
    except StopIteration:
        return None
    except csv.Error as exc:
        raise DataError(input_file.display, f"cannot be parsed from this line on ({exc}): a quoted "
                        "field that never ends? Fix the quote on this line", line=start) from None


def _norm(name):
    return "".join(ch for ch in name.strip().lower() if ch.isalnum())
