#!/usr/bin/env python3
"""Verify that a Calibre library was migrated completely and exactly once.

For every (book, format) in ``LIBRARY/metadata.db`` (restricted to
``[--start-id, --end-id)`` if given) checks that ``DEST/bookshelf.db`` has
exactly one row, that ``DEST/files/<book id>/<name>.<ext>`` exists and that
its size matches the source file (and, with ``--checksum``, that its SHA-256
matches the source file and the row).

Also reports:

* extra rows: rows in bookshelf.db with no matching source (book, format);
* duplicates: duplicate rows for one (book, format) -- impossible while the
  UNIQUE constraint holds, checked anyway -- plus files that look like a
  second copy (``name (1).ext``);
* stray files: other unexpected files in ``DEST/files/<id>/``, notably
  temporary upload files (``.<file>.part-w...``) left behind by a killed run
  that has not been restarted.

Prints::

    books: X, files expected: Y, present: Z, missing: M, duplicates: D, size mismatches: K, ...
    OK            (or FAILED)

Exit code 0 only if everything is fine. ``--json`` prints a JSON object
instead (``"ok": true/false`` plus counts and up to 20 examples per problem).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sqlite3
import sys
from pathlib import Path

DUPLICATE_NAME_RE = re.compile(r" \(\d+\)\.[A-Za-z0-9]+$")
MAX_EXAMPLES = 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def in_range(book_id: int, start: int | None, end: int | None) -> bool:
    return (start is None or book_id >= start) and (end is None or book_id < end)


def load_source(library: Path, start: int | None, end: int | None):
    """Return ({(book_id, FORMAT): (source_path, filename)}, number_of_books)."""
    conn = sqlite3.connect(f"file:{library / 'metadata.db'}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT b.id, b.path, d.format, d.name FROM books b JOIN data d ON d.book = b.id"
        ).fetchall()
        book_ids = [r[0] for r in conn.execute("SELECT id FROM books")]
    finally:
        conn.close()
    expected = {}
    for book_id, rel_path, fmt, name in rows:
        if in_range(book_id, start, end):
            filename = f"{name}.{fmt.lower()}"
            expected[(book_id, fmt.upper())] = (library / rel_path / filename, filename)
    n_books = sum(1 for b in book_ids if in_range(b, start, end))
    return expected, n_books


def load_dest_rows(dest: Path, start: int | None, end: int | None):
    """Return {(book_id, FORMAT): [(path, size, sha256), ...]} from bookshelf.db."""
    db_path = dest / "bookshelf.db"
    rows: dict[tuple[int, str], list[tuple[str, int, str]]] = {}
    if not db_path.is_file():
        return rows, False
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30.0)
    try:
        for book_id, fmt, path, size, sha in conn.execute(
            "SELECT source_book_id, format, path, size, sha256 FROM books"
        ):
            if in_range(book_id, start, end):
                rows.setdefault((book_id, fmt.upper()), []).append((path, size, sha))
    finally:
        conn.close()
    return rows, True


def verify(library: Path, dest: Path, start: int | None, end: int | None, checksum: bool) -> dict:
    expected, n_books = load_source(library, start, end)
    dest_rows, db_exists = load_dest_rows(dest, start, end)

    problems: dict[str, list[str]] = {
        "missing": [], "duplicates": [], "size_mismatches": [], "checksum_mismatches": [],
        "extra_rows": [], "stray_files": [],
    }
    present = 0
    expected_files_by_dir: dict[str, set[str]] = {}

    for (book_id, fmt), (source, filename) in sorted(expected.items()):
        expected_files_by_dir.setdefault(str(book_id), set()).add(filename)
        rows = dest_rows.get((book_id, fmt), [])
        target = dest / "files" / str(book_id) / filename
        if not rows or not target.is_file():
            why = "no row" if not rows else "file missing"
            problems["missing"].append(f"{book_id}/{fmt} {filename} ({why})")
            continue
        present += 1
        if len(rows) > 1:
            problems["duplicates"].append(f"{book_id}/{fmt}: {len(rows)} rows")
        src_size = source.stat().st_size
        dst_size = target.stat().st_size
        row_size = rows[0][1]
        if not (src_size == dst_size == row_size):
            problems["size_mismatches"].append(
                f"{book_id}/{fmt}: source {src_size}, file {dst_size}, row {row_size}")
        elif checksum:
            src_sha = sha256_file(source)
            if src_sha != sha256_file(target) or src_sha != rows[0][2]:
                problems["checksum_mismatches"].append(f"{book_id}/{fmt} {filename}")

    for key in sorted(set(dest_rows) - set(expected)):
        problems["extra_rows"].append(f"{key[0]}/{key[1]} ({len(dest_rows[key])} row(s))")

    files_dir = dest / "files"
    if files_dir.is_dir():
        for book_dir in sorted(files_dir.iterdir()):
            if not book_dir.name.isdigit() or not in_range(int(book_dir.name), start, end):
                continue
            allowed = expected_files_by_dir.get(book_dir.name, set())
            for f in sorted(book_dir.iterdir()):
                if f.name in allowed:
                    continue
                rel = f"files/{book_dir.name}/{f.name}"
                if DUPLICATE_NAME_RE.search(f.name):
                    problems["duplicates"].append(f"{rel} (duplicate copy)")
                elif f.name.startswith(".") and (".part" in f.name or ".tmp" in f.name):
                    problems["stray_files"].append(f"{rel} (temporary upload file left behind)")
                else:
                    problems["stray_files"].append(f"{rel} (unexpected)")

    counts = {k: len(v) for k, v in problems.items()}
    ok = db_exists and all(n == 0 for n in counts.values())
    return {
        "ok": ok,
        "dest_db_exists": db_exists,
        "range": [start, end],
        "books": n_books,
        "files_expected": len(expected),
        "present": present,
        **counts,
        "examples": {k: v[:MAX_EXAMPLES] for k, v in problems.items() if v},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--library", type=Path, required=True, help="Calibre library directory")
    parser.add_argument("--dest", type=Path, required=True, help="destination directory")
    parser.add_argument("--start-id", type=int, help="only check book ids >= this")
    parser.add_argument("--end-id", type=int, help="only check book ids < this")
    parser.add_argument("--checksum", action="store_true", help="also compare SHA-256 of every file")
    parser.add_argument("--json", action="store_true", help="print a JSON object")
    args = parser.parse_args(argv)

    if not (args.library / "metadata.db").is_file():
        print(f"error: no Calibre database at {args.library / 'metadata.db'}", file=sys.stderr)
        return 2

    result = verify(args.library, args.dest, args.start_id, args.end_id, args.checksum)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        if not result["dest_db_exists"]:
            print(f"destination database missing: {args.dest / 'bookshelf.db'}")
        for kind, examples in result["examples"].items():
            for ex in examples:
                print(f"{kind}: {ex}")
        line = (f"books: {result['books']}, files expected: {result['files_expected']}, "
                f"present: {result['present']}, missing: {result['missing']}, "
                f"duplicates: {result['duplicates']}, size mismatches: {result['size_mismatches']}, "
                f"extra rows: {result['extra_rows']}, stray files: {result['stray_files']}")
        if args.checksum:
            line += f", checksum mismatches: {result['checksum_mismatches']}"
        print(line)
        print("OK" if result["ok"] else "FAILED")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
