"""Counts every decision a reader makes, so a run can say what it read, kept and dropped, and why."""

import dataclasses

MAX_EXAMPLES = 5


@dataclasses.dataclass
class FileReport:
    """What happened to one input file.

    Attributes:
      path: the file as the user would name it (``archive.zip:Ratings.csv`` for a zip member).
      rows_read: data rows found (header excluded, blank lines excluded).
      rows_kept: rows that reached the cleaned table.
      dropped: reason -> number of rows removed for it.
      fixed: reason -> number of rows kept with a value repaired or set to missing.
      examples: reason -> the first few line numbers concerned.
      notes: free-text remarks (encoding fallback, a missing file, ...).
    """

    path: str
    rows_read: int = 0
    rows_kept: int = 0
    dropped: dict = dataclasses.field(default_factory=dict)
    fixed: dict = dataclasses.field(default_factory=dict)
    examples: dict = dataclasses.field(default_factory=dict)
    notes: list = dataclasses.field(default_factory=list)

    def drop(self, reason, lines):
        """Records that the rows at `lines` (file line numbers) were removed for `reason`."""
        self._count(self.dropped, reason, lines)

    def fix(self, reason, lines):
        """Records that the rows at `lines` were kept with a value repaired for `reason`."""
        self._count(self.fixed, reason, lines)

    def _count(self, counter, reason, lines):
        lines = [int(x) for x in lines]
        if not lines:
            return
        counter[reason] = counter.get(reason, 0) + len(lines)
        kept = self.examples.setdefault(reason, [])
        kept.extend(lines[: MAX_EXAMPLES - len(kept)])

    def to_dict(self):
        return dataclasses.asdict(self)


@dataclasses.dataclass
class DataReport:
    """All file reports of one data set plus data-set-level warnings and counts."""

    files: list = dataclasses.field(default_factory=list)
    warnings: list = dataclasses.field(default_factory=list)
    counts: dict = dataclasses.field(default_factory=dict)

    def add_file(self, path):
        report = FileReport(path=str(path))
        self.files.append(report)
        return report

    def warn(self, message):
        self.warnings.append(message)

    def to_dict(self):
        return {
            "files": [f.to_dict() for f in self.files],
            "warnings": list(self.warnings),
            "counts": dict(self.counts),
        }

    def format(self):
        """Returns a human-readable multi-line summary."""
        out = []
        for f in self.files:
            out.append(f"{f.path}: read {f.rows_read:,} rows, kept {f.rows_kept:,}")
            for reason, n in sorted(f.dropped.items(), key=lambda kv: -kv[1]):
                out.append(f"  dropped {n:>9,}  {reason}  (e.g. lines {_lines(f.examples[reason])})")
            for reason, n in sorted(f.fixed.items(), key=lambda kv: -kv[1]):
                out.append(f"  fixed   {n:>9,}  {reason}  (e.g. lines {_lines(f.examples[reason])})")
            for note in f.notes:
                out.append(f"  note: {note}")
        for key, value in self.counts.items():
            out.append(f"{key}: {value:,}" if isinstance(value, int) else f"{key}: {value}")
        for message in self.warnings:
            out.append(f"WARNING: {message}")
        return "\n".join(out)


def _lines(lines):
    return ", ".join(str(x) for x in lines)
