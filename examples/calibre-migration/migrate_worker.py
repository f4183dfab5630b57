#!/usr/bin/env python3
"""Migration worker: copy one shard of a Calibre library into a MyBookshelf2-like store.

Each worker owns the half-open book-id range ``[--start-id, --end-id)`` and
walks it in batches of ``--batch-size`` books, ordered by ``books.id``:

1. *Discovery*: query ``metadata.db`` for the next batch of books with
   ``id > cursor AND id < end`` and all their formats (``data`` rows).
2. *Upload*: copy every file of the batch to ``DEST/files/<book id>/`` and
   insert a row into ``DEST/bookshelf.db`` using ``--parallel-uploads`` threads.
   A row that already exists (UNIQUE(source_book_id, format)) is skipped, so a
   batch that was interrupted half-way can simply be redone.
3. *Checkpoint*: only after *every* file of the batch is stored, advance the
   cursor to the batch's max book id and atomically rewrite the progress file
   ``PROGRESS_DIR/migration_progress_worker<ID>.json``.

Cursor semantics: ``last_processed_book_id = C`` means every book id ``<= C``
in the shard is done. A fresh shard starts at ``start - 1``; a finished shard
ends at ``end - 1`` with ``"completed": true``.

Exit codes: 0 shard complete, 1 unexpected error (logged with traceback),
2 bad arguments / fault spec, 3 simulated crash (fault injection),
143 SIGTERM, 130 SIGINT.

Fault injection (for exercising the supervisor) is controlled by the
``MIGRATION_FAULT`` environment variable and optionally the file named by
``MIGRATION_FAULT_FILE``; see README.md or ``parse_fault_spec``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import logging
import os
import signal
import sqlite3
import sys
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_SIMULATED_CRASH = 3
EXIT_SIGINT = 130
EXIT_SIGTERM = 143

LOG_FORMAT = "%(asctime)s - %(levelname)s - %(message)s"
TEMP_MARKER = ".part-w"  # in-flight upload files: ".<file>.part-w<worker>-<thread>"

log = logging.getLogger("migrate_worker")


# --------------------------------------------------------------------------
# Graceful shutdown
# --------------------------------------------------------------------------

STOP = threading.Event()
_stop_signal: int | None = None


class StopRequested(Exception):
    """Raised in the main thread once SIGTERM/SIGINT has been received."""


def _on_signal(signum: int, _frame) -> None:
    global _stop_signal
    _stop_signal = signum
    STOP.set()


def check_stop() -> None:
    """Raise StopRequested if a termination signal arrived."""
    if STOP.is_set():
        raise StopRequested()


# --------------------------------------------------------------------------
# Fault injection
# --------------------------------------------------------------------------

FAULT_KINDS = ("crash", "hang", "freeze", "loop")


@dataclass(frozen=True)
class Fault:
    """One injected fault: ``kind`` fires when the worker reaches ``book_id``."""

    kind: str
    book_id: int
    always: bool = False

    @property
    def marker_name(self) -> str:
        return f"{self.kind}_{self.book_id}"


def parse_fault_spec(spec: str) -> list[Fault]:
    """Parse ``KIND:BOOK_ID[:always]`` items separated by commas/whitespace.

    KIND is one of crash, hang, freeze, loop. Raises ValueError on malformed input.
    """
    faults = []
    for item in spec.replace(",", " ").split():
        parts = item.split(":")
        if len(parts) not in (2, 3) or parts[0] not in FAULT_KINDS:
            raise ValueError(f"bad fault {item!r}: expected KIND:BOOK_ID[:always], KIND in {FAULT_KINDS}")
        try:
            book_id = int(parts[1])
        except ValueError:
            raise ValueError(f"bad fault {item!r}: BOOK_ID must be an integer") from None
        if len(parts) == 3 and parts[2] != "always":
            raise ValueError(f"bad fault {item!r}: the only allowed suffix is ':always'")
        faults.append(Fault(parts[0], book_id, always=len(parts) == 3))
    return faults


class FaultInjector:
    """Decides when an injected fault fires.

    A fault applies only if its book id lies in this worker's ``[start, end)``.
    It is *due* when the worker reaches the first book whose id is >= the
    fault's id (so ids that fall into a gap still fire). Unless ``:always`` is
    given, a fault fires once per destination: firing first creates the marker
    ``DEST/.faults_fired/<kind>_<id>`` with O_CREAT|O_EXCL, and an existing
    marker means "already fired, skip".
    """

    def __init__(self, env_spec: str, fault_file: str | None, dest: Path, start: int, end: int):
        self.env_faults = parse_fault_spec(env_spec)
        self.fault_file = Path(fault_file) if fault_file else None
        self.file_faults: list[Fault] = []
        self.marker_dir = dest / ".faults_fired"
        self.start, self.end = start, end
        self.fired_this_run: set[Fault] = set()

    def refresh(self) -> None:
        """Re-read MIGRATION_FAULT_FILE (if set); called at every batch start."""
        if self.fault_file is None:
            return
        try:
            text = self.fault_file.read_text()
        except FileNotFoundError:
            self.file_faults = []
            return
        except OSError as exc:
            log.warning("Cannot read fault file %s: %s", self.fault_file, exc)
            return
        try:
            self.file_faults = parse_fault_spec(text)
        except ValueError as exc:
            log.warning("Ignoring fault file %s: %s", self.fault_file, exc)

    def _candidates(self, kinds: tuple[str, ...]):
        for fault in (*self.env_faults, *self.file_faults):
            if fault.kind in kinds and self.start <= fault.book_id < self.end:
                yield fault

    def _claim(self, fault: Fault) -> bool:
        """Return True if the fault may fire now (creating its once-marker)."""
        if fault.always or fault in self.fired_this_run:
            return True
        self.marker_dir.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.marker_dir / fault.marker_name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as fh:
            fh.write(f"pid={os.getpid()} at={dt.datetime.now().isoformat()}\n")
        return True

    def due(self, kinds: tuple[str, ...], cursor: int, reached_id: int) -> Fault | None:
        """Fault of one of ``kinds`` triggered by reaching ``reached_id`` from ``cursor``."""
        for fault in self._candidates(kinds):
            if cursor < fault.book_id <= reached_id and self._claim(fault):
                self.fired_this_run.add(fault)
                return fault
        return None


def fire_process_fault(fault: Fault) -> None:
    """Execute a crash or hang fault. Never returns normally."""
    if fault.kind == "crash":
        log.error("Simulated crash at book.id %s", f"{fault.book_id:,}")
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(EXIT_SIMULATED_CRASH)  # no cleanup, like an OOM kill
    if fault.kind == "hang":
        # Alive, silent, no progress. Only a signal gets us out of here.
        while not STOP.wait(3600):
            pass
        raise StopRequested()
    if fault.kind == "freeze":
        # Alive, silent, and deaf to SIGTERM/SIGINT (like a process blocked on a dead
        # backend): only SIGKILL ends it.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        while True:
            time.sleep(3600)
    raise AssertionError(f"not a process fault: {fault}")


# --------------------------------------------------------------------------
# Source (Calibre) and destination (MyBookshelf2-like) access
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class BookFile:
    """One (book, format) pair of the Calibre library."""

    book_id: int
    title: str
    author: str
    rel_path: str  # books.path, "<Author>/<Title> (<id>)"
    format: str  # data.format, upper case
    name: str  # data.name, "<Title> - <Author>"
    size: int  # data.uncompressed_size

    @property
    def filename(self) -> str:
        return f"{self.name}.{self.format.lower()}"


@dataclass
class Discovery:
    """Result of one discovery query."""

    rows_checked: int  # number of books looked at
    files: list[BookFile] = field(default_factory=list)
    next_cursor: int | None = None  # cursor after this batch is done; None = nothing left


DEST_SCHEMA = """
CREATE TABLE IF NOT EXISTS books (
    id             INTEGER PRIMARY KEY,
    source_book_id INTEGER NOT NULL,
    format         TEXT NOT NULL,
    title          TEXT,
    author         TEXT,
    path           TEXT NOT NULL,
    size           INTEGER,
    sha256         TEXT,
    worker_id      INTEGER,
    migrated_at    TEXT,
    UNIQUE(source_book_id, format)
)
"""


def open_dest_db(db_path: Path) -> sqlite3.Connection:
    """Open bookshelf.db for concurrent use (WAL, 30 s busy timeout, autocommit)."""
    conn = sqlite3.connect(db_path, timeout=30.0, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 30000")
    for attempt in range(100):
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            break
        except sqlite3.OperationalError as exc:  # another process is switching it right now
            if "locked" not in str(exc) and "busy" not in str(exc) or attempt == 99:
                raise
            time.sleep(0.1)
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn


def open_library_db(library: Path) -> sqlite3.Connection:
    db_path = library / "metadata.db"
    if not db_path.is_file():
        raise FileNotFoundError(f"Calibre database not found: {db_path}")
    return sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30.0)


DISCOVERY_SQL = """
WITH batch AS (
    SELECT id FROM books WHERE id > ? AND id < ? ORDER BY id LIMIT ?
)
SELECT b.id, b.title, b.path,
       (SELECT a.name FROM books_authors_link l JOIN authors a ON a.id = l.author
         WHERE l.book = b.id ORDER BY l.id LIMIT 1) AS author,
       d.format, d.name, d.uncompressed_size
  FROM batch
  JOIN books b ON b.id = batch.id
  LEFT JOIN data d ON d.book = b.id
 ORDER BY b.id, d.format
"""


def discover_batch(lib: sqlite3.Connection, cursor: int, end: int, batch_size: int,
                   loop_fault_due) -> Discovery:
    """Find the next batch of book files: books with ``cursor < id < end``.

    Returns the files of up to ``batch_size`` books and the cursor to commit
    once they are all stored (the batch's max book id). ``rows_checked == 0``
    means the shard is exhausted.

    ``loop_fault_due(max_id) -> bool`` is the injected "infinite discovery loop"
    bug (MIGRATION_FAULT=loop:ID): when it returns True the method pretends all
    rows were already migrated and hands back the *unchanged* cursor, so the
    caller re-queries the very same window forever while logging as if it
    were making progress. This reproduces a real bug of the original tool.
    """
    rows = lib.execute(DISCOVERY_SQL, (cursor, end, batch_size)).fetchall()
    if not rows:
        return Discovery(rows_checked=0)

    book_ids = {row[0] for row in rows}
    max_id = max(book_ids)

    if loop_fault_due(max_id):
        # --- Injected bug -------------------------------------------------
        # The "fast method" compared rows against the wrong set and treated
        # every row as already migrated, and then reported the start of the
        # window instead of max_id as the position to continue from.
        STOP.wait(0.5)  # the (slow) query of the real tool
        return Discovery(rows_checked=batch_size, files=[], next_cursor=cursor)
        # --------------------------------------------------------------------

    files = [
        BookFile(book_id=r[0], title=r[1], rel_path=r[2], author=r[3] or "Unknown",
                 format=r[4], name=r[5], size=r[6])
        for r in rows
        if r[4] is not None  # books without any format have a NULL data row
    ]
    return Discovery(rows_checked=len(book_ids), files=files, next_cursor=max_id)


# --------------------------------------------------------------------------
# Upload
# --------------------------------------------------------------------------


class Uploader:
    """Copies book files into DEST and records them in bookshelf.db (thread-safe)."""

    def __init__(self, library: Path, dest: Path, worker_id: int, upload_delay: float):
        self.library = library
        self.dest = dest
        self.files_dir = dest / "files"
        self.db_path = dest / "bookshelf.db"
        self.worker_id = worker_id
        self.upload_delay = upload_delay
        self._local = threading.local()

    def conn(self) -> sqlite3.Connection:
        """Per-thread connection to bookshelf.db."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = open_dest_db(self.db_path)
        return conn

    def init_dest(self) -> None:
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self.conn().execute(DEST_SCHEMA)  # IF NOT EXISTS: safe when racing other workers

    def remove_stale_temp_files(self, start: int, end: int) -> int:
        """Delete half-copied files left by a killed run of a worker in [start, end)."""
        removed = 0
        with os.scandir(self.files_dir) as entries:
            for entry in entries:
                if not (entry.name.isdigit() and start <= int(entry.name) < end and entry.is_dir()):
                    continue
                for f in os.scandir(entry.path):
                    if f.name.startswith(".") and TEMP_MARKER in f.name:
                        os.unlink(f.path)
                        removed += 1
        return removed

    def upload(self, bf: BookFile) -> str:
        """Upload one file. Returns "uploaded", "skipped" (already there) or "stopped"."""
        if STOP.is_set():
            return "stopped"
        log.info("Uploading: %s", bf.filename)
        t0 = time.monotonic()
        if self.upload_delay > 0 and STOP.wait(self.upload_delay):  # simulated network latency
            return "stopped"

        source = self.library / bf.rel_path / bf.filename
        target_dir = self.files_dir / str(bf.book_id)
        target_dir.mkdir(parents=True, exist_ok=True)
        target = target_dir / bf.filename
        tmp = target_dir / f".{bf.filename}{TEMP_MARKER}{self.worker_id}-{threading.get_ident()}"

        digest = hashlib.sha256()
        size = 0
        try:
            with open(source, "rb") as src, open(tmp, "wb") as dst:
                while chunk := src.read(1 << 20):
                    digest.update(chunk)
                    dst.write(chunk)
                    size += len(chunk)
            if size != bf.size:
                log.warning("Size mismatch for %s: metadata.db says %s, file has %s bytes",
                            bf.filename, f"{bf.size:,}", f"{size:,}")

            conn = self.conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(
                    "INSERT INTO books (source_book_id, format, title, author, path, size, sha256,"
                    " worker_id, migrated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (bf.book_id, bf.format, bf.title, bf.author,
                     f"files/{bf.book_id}/{bf.filename}", size, digest.hexdigest(),
                     self.worker_id, dt.datetime.now(dt.timezone.utc).isoformat()),
                )
            except sqlite3.IntegrityError:
                # Stored by an earlier run that died before advancing the cursor.
                conn.execute("ROLLBACK")
                tmp.unlink(missing_ok=True)
                log.info("File already exists in MyBookshelf2: %s (skipped)", bf.filename)
                return "skipped"
            try:
                os.replace(tmp, target)  # file first, then commit the row
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        finally:
            tmp.unlink(missing_ok=True)
        log.info("Successfully uploaded: %s (took %.1fs)", bf.filename, time.monotonic() - t0)
        return "uploaded"


def upload_batch(pool: ThreadPoolExecutor, uploader: Uploader, files: list[BookFile],
                 cursor: int, faults: FaultInjector) -> dict[str, int]:
    """Upload all files of a batch in parallel; raise if any upload failed.

    Crash/hang faults are checked in book-id order in this (main) thread;
    before one fires, all earlier uploads of the batch are allowed to finish,
    so a crash always leaves a partially stored batch behind.
    """
    futures: list[Future] = []
    for bf in files:
        fault = faults.due(("crash", "hang", "freeze"), cursor, bf.book_id)
        if fault is not None:
            _wait_all(futures)
            fire_process_fault(fault)
        futures.append(pool.submit(uploader.upload, bf))
    _wait_all(futures)
    counts = {"uploaded": 0, "skipped": 0, "stopped": 0}
    for fut in futures:
        counts[fut.result()] += 1
    return counts


def _wait_all(futures: list[Future]) -> None:
    """Wait for futures; re-raise the first upload exception."""
    done, _ = wait(futures, return_when=FIRST_EXCEPTION)
    for fut in done:
        if fut.exception() is not None:
            STOP.set()  # let the other threads bail out quickly
            raise fut.exception()


# --------------------------------------------------------------------------
# Progress file
# --------------------------------------------------------------------------


def progress_path(progress_dir: Path, worker_id: int) -> Path:
    return progress_dir / f"migration_progress_worker{worker_id}.json"


def write_json_atomic(path: Path, data: dict) -> None:
    """Write JSON via temp file + fsync + rename + directory fsync."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=2)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_progress(args, conn: sqlite3.Connection, cursor: int, completed: bool) -> None:
    books, files = conn.execute(
        "SELECT COUNT(DISTINCT source_book_id), COUNT(*) FROM books"
        " WHERE source_book_id >= ? AND source_book_id < ?",
        (args.start_id, args.end_id),
    ).fetchone()
    write_json_atomic(progress_path(args.progress_dir, args.worker_id), {
        "worker_id": args.worker_id,
        "last_processed_book_id": cursor,
        "range_start": args.start_id,
        "range_end": args.end_id,
        "books_migrated": books,
        "files_migrated": files,
        "completed": completed,
        "updated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    })


# --------------------------------------------------------------------------
# Main loop
# --------------------------------------------------------------------------


def migrate(args, faults: FaultInjector) -> int:
    """Run the batch loop until the shard is done. Returns the exit code."""
    start, end = args.start_id, args.end_id
    cursor = args.resume_from if args.resume_from is not None else start - 1
    if cursor < start - 1:
        log.warning("Resume cursor %s is below the range start; using %s", f"{cursor:,}", f"{start - 1:,}")
        cursor = start - 1

    lib = open_library_db(args.library)
    uploader = Uploader(args.library, args.dest, args.worker_id, args.upload_delay)
    uploader.init_dest()
    dest_conn = uploader.conn()

    log.info("Worker %d starting: range [%s, %s), resuming from book.id > %s, parallel_uploads=%d, batch_size=%d",
             args.worker_id, f"{start:,}", f"{end:,}", f"{cursor:,}", args.parallel_uploads, args.batch_size)
    log.info("Source library: %s, destination: %s", args.library, args.dest)
    removed = uploader.remove_stale_temp_files(start, end)
    if removed:
        log.warning("Removed %d stale temporary upload file(s) from an interrupted run", removed)
    write_progress(args, dest_conn, cursor, completed=cursor >= end - 1)

    batch_no = 0
    total_new = 0
    total_processed = 0
    counts_run = {"uploaded": 0, "skipped": 0}
    pool = ThreadPoolExecutor(max_workers=args.parallel_uploads, thread_name_prefix="upload")
    try:
        while True:
            check_stop()
            faults.refresh()
            batch_no += 1
            log.info("=== Processing batch %d (batch size: %s) ===", batch_no, f"{args.batch_size:,}")
            log.info("[DISCOVERY PHASE] Querying Calibre database for book files (fast method). "
                     "Starting from book.id > %s", f"{cursor:,}")
            disc = discover_batch(
                lib, cursor, end, args.batch_size,
                loop_fault_due=lambda max_id, c=cursor: faults.due(("loop",), c, max_id) is not None,
            )
            check_stop()

            if disc.rows_checked == 0:
                cursor = max(cursor, end - 1)  # every id below end is done
                write_progress(args, dest_conn, cursor, completed=True)
                log.info("Migration complete: worker %d, books %s..%s, migrated %s files this run",
                         args.worker_id, f"{start:,}", f"{end - 1:,}", f"{counts_run['uploaded']:,}")
                return EXIT_OK

            if not disc.files:
                log.info("Checked %s rows with no new files. Moving to next batch.", f"{disc.rows_checked:,}")
                if disc.next_cursor != cursor:
                    cursor = disc.next_cursor
                    write_progress(args, dest_conn, cursor, completed=False)
                continue

            total_new += len(disc.files)
            total_processed += disc.rows_checked
            log.info("[DISCOVERY] Processed batch: book.id > %d to %s, rows=%d, new_files=%d, "
                     "total_new=%d, total_processed=%s", cursor, f"{disc.next_cursor:,}",
                     disc.rows_checked, len(disc.files), total_new, f"{total_processed:,}")
            log.info("Found %s new files after checking %s rows. Processing these files.",
                     f"{len(disc.files):,}", f"{disc.rows_checked:,}")

            counts = upload_batch(pool, uploader, disc.files, cursor, faults)
            check_stop()  # an interrupted batch must not advance the cursor
            counts_run["uploaded"] += counts["uploaded"]
            counts_run["skipped"] += counts["skipped"]
            log.info("[UPLOAD] Batch %d complete. Success: %d, Skipped: %d, book.id: %s",
                     batch_no, counts["uploaded"], counts["skipped"], f"{disc.next_cursor:,}")

            cursor = disc.next_cursor
            write_progress(args, dest_conn, cursor, completed=False)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        lib.close()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker-id", type=int, required=True)
    parser.add_argument("--library", type=Path, required=True, help="Calibre library directory")
    parser.add_argument("--dest", type=Path, required=True, help="destination (MyBookshelf2) directory")
    parser.add_argument("--start-id", type=int, required=True, help="first book id of the shard (inclusive)")
    parser.add_argument("--end-id", type=int, required=True, help="end of the shard (exclusive)")
    parser.add_argument("--resume-from", default="",
                        help="cursor: every id <= this is done (empty/absent: start-id - 1)")
    parser.add_argument("--parallel-uploads", type=int, default=1, help="upload threads (default 1)")
    parser.add_argument("--batch-size", type=int, default=1000, help="books per batch (default 1000)")
    parser.add_argument("--progress-dir", type=Path, default=Path("."),
                        help="directory of migration_progress_worker<ID>.json (default .)")
    parser.add_argument("--upload-delay", type=float, default=0.01,
                        help="simulated per-file network latency in seconds (default 0.01)")
    parser.add_argument("--log-file", type=Path, help="append log here instead of stderr")
    args = parser.parse_args(argv)

    resume = args.resume_from.strip()
    try:
        args.resume_from = int(resume) if resume else None
    except ValueError:
        parser.error(f"--resume-from must be an integer or empty, got {resume!r}")
    if args.end_id < args.start_id:
        parser.error("--end-id must be >= --start-id")
    if args.parallel_uploads < 1 or args.batch_size < 1 or args.upload_delay < 0:
        parser.error("--parallel-uploads and --batch-size must be >= 1, --upload-delay >= 0")
    return args


def setup_logging(log_file: Path | None) -> None:
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler: logging.Handler = logging.FileHandler(log_file, mode="a", encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, handlers=[handler])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.log_file)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)

    try:
        faults = FaultInjector(os.environ.get("MIGRATION_FAULT", ""), os.environ.get("MIGRATION_FAULT_FILE"),
                               args.dest, args.start_id, args.end_id)
    except ValueError as exc:
        log.error("Invalid MIGRATION_FAULT: %s", exc)
        return EXIT_USAGE

    try:
        args.progress_dir.mkdir(parents=True, exist_ok=True)
        return migrate(args, faults)
    except StopRequested:
        if _stop_signal == signal.SIGINT:
            log.warning("Received SIGINT, stopping")
            return EXIT_SIGINT
        log.warning("Received SIGTERM, stopping")
        return EXIT_SIGTERM
    except Exception:
        log.exception("Unexpected error in worker %d", args.worker_id)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
