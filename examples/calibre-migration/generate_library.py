#!/usr/bin/env python3
"""Generate a deterministic, Calibre-style e-book library for the migration demo.

The library mimics what Calibre writes on disk:

* ``DIR/metadata.db`` -- SQLite database with (a faithful subset of) Calibre's
  schema: ``books``, ``authors``, ``books_authors_link`` and ``data``.
* ``DIR/<Author>/<Title> (<id>)/<Title> - <Author>.<ext>`` -- the book files.
  ``books.path`` is ``"<Author>/<Title> (<id>)"`` and ``data.name`` is
  ``"<Title> - <Author>"``; ``data.format`` is the upper-case extension.

Everything (ids, gaps, titles, formats, file sizes and file contents) is derived
from ``random.Random(seed)``, so the same arguments always produce the same
library byte for byte (apart from SQLite page layout details).

About 5-10 % of the ids are skipped (deleted books), so the max book id is a bit
larger than the number of books. About 30 % of the books have 2-3 formats.

The library is built in a temporary directory next to DIR and renamed into
place at the end, so an interrupted run never leaves a half-written library
that looks complete.

Usage::

    generate_library.py --library DIR [--books N] [--seed S]
                        [--min-size BYTES] [--max-size BYTES] [--force]
    generate_library.py --library DIR --print-end

``--print-end`` prints only ``max(books.id) + 1`` (the exclusive end of the key
range) on stdout; automon uses it as "a command that prints the end of the key
range".
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import shutil
import sqlite3
import sys
import uuid
from pathlib import Path

FORMATS = ["EPUB", "PDF", "MOBI", "FB2", "AZW3"]
# Relative popularity of each format as the *primary* format of a book.
FORMAT_WEIGHTS = [50, 20, 15, 8, 7]

FIRST_NAMES = [
    "Ada", "Alan", "Anna", "Boris", "Clara", "Daniel", "Elena", "Frank", "Grace",
    "Hugo", "Irene", "Jonas", "Karin", "Leo", "Maria", "Nikolai", "Olga", "Pavel",
    "Quentin", "Rosa", "Stefan", "Tereza", "Ursula", "Victor", "Wanda", "Xavier",
    "Yvonne", "Zdenek",
]
LAST_NAMES = [
    "Novak", "Svoboda", "Dvorak", "Cerny", "Prochazka", "Kucera", "Vesely",
    "Horak", "Nemec", "Marek", "Pokorny", "Hajek", "Kral", "Jelinek", "Ruzicka",
    "Benes", "Fiala", "Sedlacek", "Dolezal", "Zeman", "Kolar", "Navratil",
    "Cermak", "Urban", "Vanek", "Blazek", "Kriz", "Kovar",
]
TITLE_ADJECTIVES = [
    "Silent", "Lost", "Hidden", "Broken", "Golden", "Last", "Distant", "Secret",
    "Forgotten", "Burning", "Frozen", "Crimson", "Quiet", "Endless", "Wild",
    "Bitter", "Hollow", "Electric", "Ancient", "Restless",
]
TITLE_NOUNS = [
    "River", "Garden", "Empire", "Winter", "Machine", "Orchard", "Harbor",
    "Library", "Kingdom", "Storm", "Mirror", "Forest", "Voyage", "Archive",
    "Lantern", "Station", "Island", "Cathedral", "Signal", "Compass",
]
TITLE_PATTERNS = [
    "The {adj} {noun}",
    "{adj} {noun}",
    "The {noun} of {noun2}s",
    "The {noun} and the {noun2}",
    "{noun}: {adj} {noun2}",  # the ':' exercises filename sanitising
    "Beyond the {adj} {noun}",
    "The {noun}'s {noun2}",
]

# Characters Calibre replaces when building file-system paths.
_UNSAFE_CHARS = '/\\:*?"<>|'


def sanitize(component: str, max_len: int = 80) -> str:
    """Make a string safe to use as a single path component (like Calibre)."""
    cleaned = "".join("_" if c in _UNSAFE_CHARS or ord(c) < 32 else c for c in component)
    cleaned = cleaned.strip().strip(".") or "Unknown"
    return cleaned[:max_len].rstrip()


def title_sort(title: str) -> str:
    """Calibre-style sort key: move a leading article to the end."""
    for article in ("The ", "A ", "An "):
        if title.startswith(article):
            return f"{title[len(article):]}, {article.strip()}"
    return title


def author_sort(name: str) -> str:
    """Calibre-style author sort: "Last, First"."""
    parts = name.split()
    if len(parts) < 2:
        return name
    return f"{parts[-1]}, {' '.join(parts[:-1])}"


SCHEMA = """
CREATE TABLE books (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    title         TEXT NOT NULL DEFAULT 'Unknown' COLLATE NOCASE,
    sort          TEXT COLLATE NOCASE,
    timestamp     TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    pubdate       TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    series_index  REAL NOT NULL DEFAULT 1.0,
    author_sort   TEXT COLLATE NOCASE,
    isbn          TEXT DEFAULT '' COLLATE NOCASE,
    lccn          TEXT DEFAULT '' COLLATE NOCASE,
    path          TEXT NOT NULL DEFAULT '',
    flags         INTEGER NOT NULL DEFAULT 1,
    uuid          TEXT,
    has_cover     BOOL DEFAULT 0,
    last_modified TIMESTAMP NOT NULL DEFAULT '2000-01-01 00:00:00+00:00'
);
CREATE INDEX books_idx_sort ON books (sort COLLATE NOCASE);
CREATE INDEX authors_idx ON books (author_sort COLLATE NOCASE);
CREATE TABLE authors (
    id   INTEGER PRIMARY KEY,
    name TEXT NOT NULL COLLATE NOCASE,
    sort TEXT COLLATE NOCASE,
    link TEXT NOT NULL DEFAULT '',
    UNIQUE(name)
);
CREATE TABLE books_authors_link (
    id     INTEGER PRIMARY KEY,
    book   INTEGER NOT NULL,
    author INTEGER NOT NULL,
    UNIQUE(book, author)
);
CREATE INDEX books_authors_link_aidx ON books_authors_link (author);
CREATE INDEX books_authors_link_bidx ON books_authors_link (book);
CREATE TABLE data (
    id                INTEGER PRIMARY KEY,
    book              INTEGER NOT NULL,
    format            TEXT NOT NULL COLLATE NOCASE,
    uncompressed_size INTEGER NOT NULL,
    name              TEXT NOT NULL,
    UNIQUE(book, format)
);
CREATE INDEX data_idx ON data (book);
CREATE INDEX formats_idx ON data (format);
"""


def count_books(db_path: Path) -> int:
    """Number of rows in books (read-only)."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT COUNT(*) FROM books").fetchone()[0]
    finally:
        conn.close()


def print_end(library: Path) -> int:
    """Print max(books.id)+1 on stdout. Returns the process exit code."""
    db_path = library / "metadata.db"
    if not db_path.is_file():
        print(f"error: no Calibre database at {db_path}", file=sys.stderr)
        return 1
    try:
        conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
        try:
            max_id = conn.execute("SELECT MAX(id) FROM books").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error as exc:
        print(f"error: cannot read {db_path}: {exc}", file=sys.stderr)
        return 1
    print((max_id or 0) + 1)
    return 0


def _remove_stale_build_dirs(library: Path) -> None:
    """Delete leftover build directories of generator runs that died."""
    prefix = f".{library.name}.building-"
    parent = library.parent
    if not parent.is_dir():
        return
    for entry in parent.iterdir():
        if not entry.name.startswith(prefix):
            continue
        try:
            pid = int(entry.name[len(prefix):])
        except ValueError:
            continue
        try:
            os.kill(pid, 0)
            alive = pid != os.getpid()
        except ProcessLookupError:
            alive = False
        except PermissionError:
            alive = True
        if not alive:
            shutil.rmtree(entry, ignore_errors=True)


def build_library(target: Path, books: int, seed: int, min_size: int, max_size: int) -> dict:
    """Write a complete library into ``target`` (which must not exist).

    Returns summary statistics.
    """
    rng = random.Random(seed)
    target.mkdir(parents=True)

    # A pool of authors; a few of them are prolific.
    n_authors = max(1, min(len(FIRST_NAMES) * len(LAST_NAMES), books // 8 + 1))
    author_names: list[str] = []
    seen: set[str] = set()
    while len(author_names) < n_authors:
        name = f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"
        if name not in seen:
            seen.add(name)
            author_names.append(name)
    author_weights = [1.0 / (i + 1) ** 0.7 for i in range(n_authors)]

    base_time = dt.datetime(2015, 1, 1, tzinfo=dt.timezone.utc)
    conn = sqlite3.connect(target / "metadata.db")
    conn.executescript(SCHEMA)
    conn.executemany(
        "INSERT INTO authors (id, name, sort, link) VALUES (?, ?, ?, '')",
        [(i + 1, n, author_sort(n)) for i, n in enumerate(author_names)],
    )

    n_files = 0
    total_bytes = 0
    book_id = 0
    link_id = 0
    data_id = 0
    for _ in range(books):
        book_id += 1
        # Deleted books leave gaps in the id sequence (~7 % of ids skipped).
        while rng.random() < 0.07:
            book_id += 1

        author_idx = rng.choices(range(n_authors), weights=author_weights)[0]
        author = author_names[author_idx]
        title = rng.choice(TITLE_PATTERNS).format(
            adj=rng.choice(TITLE_ADJECTIVES),
            noun=rng.choice(TITLE_NOUNS),
            noun2=rng.choice(TITLE_NOUNS),
        )
        rel_path = f"{sanitize(author)}/{sanitize(title, 60)} ({book_id})"
        file_stem = f"{sanitize(title, 60)} - {sanitize(author)}"

        added = base_time + dt.timedelta(seconds=rng.randrange(0, 9 * 365 * 86400))
        pubdate = dt.datetime(rng.randrange(1900, 2024), rng.randrange(1, 13), 1, tzinfo=dt.timezone.utc)
        conn.execute(
            "INSERT INTO books (id, title, sort, timestamp, pubdate, series_index, author_sort,"
            " path, uuid, has_cover, last_modified) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                book_id, title, title_sort(title), added.isoformat(sep=" "),
                pubdate.isoformat(sep=" "), 1.0, author_sort(author), rel_path,
                str(uuid.UUID(int=rng.getrandbits(128), version=4)), 0,
                (added + dt.timedelta(days=rng.randrange(0, 400))).isoformat(sep=" "),
            ),
        )
        link_id += 1
        conn.execute(
            "INSERT INTO books_authors_link (id, book, author) VALUES (?, ?, ?)",
            (link_id, book_id, author_idx + 1),
        )

        # ~30 % of books come in 2-3 formats.
        n_formats = 1 if rng.random() >= 0.30 else rng.choice((2, 2, 3))
        primary = rng.choices(FORMATS, weights=FORMAT_WEIGHTS)[0]
        others = rng.sample([f for f in FORMATS if f != primary], n_formats - 1)
        book_dir = target / rel_path
        book_dir.mkdir(parents=True, exist_ok=True)
        for fmt in [primary, *others]:
            size = rng.randint(min_size, max_size)
            (book_dir / f"{file_stem}.{fmt.lower()}").write_bytes(rng.randbytes(size))
            data_id += 1
            conn.execute(
                "INSERT INTO data (id, book, format, uncompressed_size, name) VALUES (?, ?, ?, ?, ?)",
                (data_id, book_id, fmt, size, file_stem),
            )
            n_files += 1
            total_bytes += size

    conn.commit()
    conn.close()
    return {"books": books, "files": n_files, "bytes": total_bytes, "max_id": book_id}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--library", required=True, type=Path, help="library directory to create")
    parser.add_argument("--books", type=int, default=2000, help="number of books (default 2000)")
    parser.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    parser.add_argument("--min-size", type=int, default=20000, help="min file size in bytes (default 20000)")
    parser.add_argument("--max-size", type=int, default=200000, help="max file size in bytes (default 200000)")
    parser.add_argument("--force", action="store_true", help="replace an existing library")
    parser.add_argument("--print-end", action="store_true",
                        help="only print max(books.id)+1 of an existing library and exit")
    args = parser.parse_args(argv)

    library: Path = args.library
    if args.print_end:
        return print_end(library)

    if args.books < 0 or args.min_size < 0 or args.max_size < args.min_size:
        parser.error("need --books >= 0 and 0 <= --min-size <= --max-size")

    db_path = library / "metadata.db"
    if library.exists() and not args.force:
        if db_path.is_file():
            try:
                n = count_books(db_path)
            except sqlite3.Error as exc:
                print(f"error: {db_path} exists but is unreadable ({exc}); use --force", file=sys.stderr)
                return 1
            print(f"library exists: {library} ({n} books)")
            return 0
        if any(library.iterdir()):
            print(f"error: {library} exists, is not empty and has no metadata.db; use --force",
                  file=sys.stderr)
            return 1

    library.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_build_dirs(library)
    build_dir = library.parent / f".{library.name}.building-{os.getpid()}"
    if build_dir.exists():
        shutil.rmtree(build_dir)
    try:
        stats = build_library(build_dir, args.books, args.seed, args.min_size, args.max_size)
    except BaseException:
        shutil.rmtree(build_dir, ignore_errors=True)
        raise

    # Swap the finished library into place.
    old_dir = None
    if library.exists():
        if args.force and any(library.iterdir()):
            old_dir = library.parent / f".{library.name}.old-{os.getpid()}"
            os.rename(library, old_dir)
        else:
            library.rmdir()  # empty directory
    os.rename(build_dir, library)
    if old_dir is not None:
        shutil.rmtree(old_dir, ignore_errors=True)

    print(
        f"generated library {library}: books={stats['books']:,}, files={stats['files']:,}, "
        f"total bytes={stats['bytes']:,}, max book id={stats['max_id']:,}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
