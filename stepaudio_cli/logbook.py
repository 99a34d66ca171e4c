"""The local log of every answer: a SQLite database, ``logs.db`` in the XDG data folder
(``$XDG_DATA_HOME/stepaudio``, default ``~/.local/share/stepaudio``).

One row per turn (an ``ask``, or a question in ``chat``): the question, the reasoning, the
answer, the assistant's text as generated (what a follow-up sends back), the model, the
settings, usage, timings, and the conversation and turn it belongs to. Audio is referenced by
path and sha256 (table ``audio``), never copied. The schema is versioned (``PRAGMA
user_version``, one migration per version, each in its own transaction); the journal is WAL,
so several processes log at once (a writer waits up to :data:`BUSY_SECONDS` for another);
``turns_fts`` (FTS5, kept in step by triggers) searches question, reasoning and answer.

Every failure (locked, full, corrupt, a newer schema) is a :class:`LogError` naming the file:
``ask`` and ``chat`` turn it into one warning line after the answer, ``logs`` into an error.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from stepaudio_cli.errors import UserError

#: How long a writer waits for another process's transaction before it gives up.
BUSY_SECONDS = 5.0

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: turns, their audio, full-text search over question, reasoning and answer.
    (
        """CREATE TABLE turns (
            id INTEGER PRIMARY KEY,
            conversation TEXT NOT NULL,
            turn INTEGER NOT NULL,
            created REAL NOT NULL,
            command TEXT NOT NULL,
            question TEXT NOT NULL,
            system TEXT,
            sent_question TEXT,
            reasoning TEXT,
            answer TEXT,
            reply TEXT,
            model TEXT,
            settings TEXT,
            usage TEXT,
            timings TEXT,
            finish_reason TEXT,
            audio_seconds REAL,
            windows TEXT
        )""",
        "CREATE INDEX turns_by_conversation ON turns (conversation, id)",
        """CREATE TABLE audio (
            turn_id INTEGER NOT NULL REFERENCES turns (id) ON DELETE CASCADE,
            position INTEGER NOT NULL,
            name TEXT NOT NULL,
            path TEXT,
            sha256 TEXT,
            seconds REAL,
            PRIMARY KEY (turn_id, position)
        )""",
        "CREATE VIRTUAL TABLE turns_fts USING fts5 (question, reasoning, answer, content='turns', content_rowid='id')",
        """CREATE TRIGGER turns_ai AFTER INSERT ON turns BEGIN
            INSERT INTO turns_fts (rowid, question, reasoning, answer)
            VALUES (new.id, new.question, new.reasoning, new.answer);
        END""",
        """CREATE TRIGGER turns_ad AFTER DELETE ON turns BEGIN
            INSERT INTO turns_fts (turns_fts, rowid, question, reasoning, answer)
            VALUES ('delete', old.id, old.question, old.reasoning, old.answer);
        END""",
        """CREATE TRIGGER turns_au AFTER UPDATE ON turns BEGIN
            INSERT INTO turns_fts (turns_fts, rowid, question, reasoning, answer)
            VALUES ('delete', old.id, old.question, old.reasoning, old.answer);
            INSERT INTO turns_fts (rowid, question, reasoning, answer)
            VALUES (new.id, new.question, new.reasoning, new.answer);
        END""",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)
_JSON_COLUMNS = ("settings", "usage", "timings", "windows")


class LogError(UserError):
    """The log cannot be read or written; the message names the file."""

    exit_code = 1


def log_path() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "stepaudio" / "logs.db"


@dataclass(frozen=True)
class AudioRef:
    """One audio file of a turn: its name as given, absolute path (None for stdin), content hash."""

    name: str
    path: str | None
    sha256: str | None
    seconds: float | None = None


@dataclass(frozen=True)
class Entry:
    """One turn to log. ``sent_question`` is the human text the request carried when it is not
    ``question`` (a recording answered in windows: the combining request's question);
    ``reply`` the assistant's text as generated, sent back in a follow-up."""

    conversation: str
    turn: int
    command: str
    question: str
    system: str | None
    reasoning: str | None
    answer: str | None
    reply: str | None
    model: str | None
    settings: dict
    usage: dict | None
    timings: dict | None
    finish_reason: str | None
    audio_seconds: float | None
    audio: Sequence[AudioRef] = ()
    windows: list | None = None
    sent_question: str | None = None
    created: float = field(default_factory=time.time)


class Logbook:
    """The log at ``path``: opened (created and migrated) on first use, closed by ``close``."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or log_path()
        self._db: sqlite3.Connection | None = None

    # --- opening ------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if self._db is not None:
            return self._db
        with self._errors():
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            # Questions and answers are private: the file (and its -wal, -shm, which SQLite
            # creates with the same mode) is the user's alone.
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
            db = sqlite3.connect(self.path, timeout=BUSY_SECONDS, isolation_level=None)
            try:
                db.row_factory = sqlite3.Row
                db.execute("PRAGMA foreign_keys = ON")
                if db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                    db.execute("PRAGMA journal_mode = WAL")
                _migrate(db, self.path)
            except BaseException:
                db.close()
                raise
        self._db = db
        return db

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as e:
            raise LogError(f"{self.path}: {_reason(e)}") from None
        except OSError as e:
            raise LogError(f"{self.path}: {e.strerror or e}") from None

    def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()

    # --- writing ------------------------------------------------------------------------

    def add(self, entry: Entry) -> int:
        """Write one turn (and its audio) in one transaction; returns its row id."""
        db = self._connect()
        with self._errors(), _transaction(db):
            row = {
                k: getattr(entry, k)
                for k in (
                    "conversation", "turn", "created", "command", "question", "system", "sent_question",
                    "reasoning", "answer", "reply", "model", "finish_reason", "audio_seconds",
                )
            }  # fmt: skip
            row.update({k: _dump(getattr(entry, k)) for k in _JSON_COLUMNS})
            names = ", ".join(row)
            cursor = db.execute(f"INSERT INTO turns ({names}) VALUES ({', '.join('?' * len(row))})", list(row.values()))
            turn_id = cursor.lastrowid
            db.executemany(
                "INSERT INTO audio (turn_id, position, name, path, sha256, seconds) VALUES (?, ?, ?, ?, ?, ?)",
                [(turn_id, i, a.name, a.path, a.sha256, a.seconds) for i, a in enumerate(entry.audio)],
            )
        return turn_id

    # --- reading ------------------------------------------------------------------------

    def newest(self, n: int, *, query: str | None = None, conversation: str | None = None) -> list[dict]:
        """The newest ``n`` turns (oldest of them first), those matching the FTS5 ``query``
        and of ``conversation`` when given. A malformed query is a UserError (exit 2)."""
        where, args = [], []
        if conversation is not None:
            where.append("t.conversation = ?")
            args.append(conversation)
        if query is not None:
            where.append("t.id IN (SELECT rowid FROM turns_fts WHERE turns_fts MATCH ?)")
            args.append(query)
        sql = "SELECT t.* FROM turns t"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY t.id DESC LIMIT ?"
        db = self._connect()
        with self._errors():
            try:
                rows = db.execute(sql, [*args, n]).fetchall()
            except sqlite3.OperationalError as e:
                if query is not None and _bad_query(e):
                    raise UserError(f"-q {query!r}: not a valid full-text query ({_reason(e)})") from None
                raise
            return [self._record(row) for row in reversed(rows)]

    def conversation(self, conversation: str) -> list[dict]:
        """Every turn of ``conversation``, oldest first."""
        db = self._connect()
        with self._errors():
            rows = db.execute("SELECT * FROM turns WHERE conversation = ? ORDER BY id", (conversation,)).fetchall()
            return [self._record(row) for row in rows]

    def latest_conversation(self) -> str | None:
        db = self._connect()
        with self._errors():
            row = db.execute("SELECT conversation FROM turns ORDER BY id DESC LIMIT 1").fetchone()
        return row[0] if row else None

    def _record(self, row: sqlite3.Row) -> dict:
        record = dict(row)
        for k in _JSON_COLUMNS:
            record[k] = _load(record[k])
        record["created"] = _iso(record["created"])
        audio = self._db.execute(
            "SELECT name, path, sha256, seconds FROM audio WHERE turn_id = ? ORDER BY position", (row["id"],)
        ).fetchall()
        record["audio"] = [dict(a) for a in audio]
        return record


def _migrate(db: sqlite3.Connection, path: Path) -> None:
    """Bring the schema to :data:`SCHEMA_VERSION`, one version per transaction (another
    process may be migrating the same file: the version is read again inside each)."""
    while True:
        with _transaction(db):
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise LogError(
                    f"{path}: written by a newer stepaudio (schema {version}, this one knows {SCHEMA_VERSION})"
                )
            if version == SCHEMA_VERSION:
                return
            for statement in MIGRATIONS[version]:
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {version + 1}")


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE (the write lock up front, so a busy database waits at the start rather
    than failing at the commit), COMMIT, or ROLLBACK on any way out."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _reason(e: sqlite3.Error) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    if isinstance(e, sqlite3.DatabaseError) and ("not a database" in text or "malformed" in text):
        return f"{text} (move it aside to start a new log)"
    return text


def _bad_query(e: sqlite3.OperationalError) -> bool:
    """FTS5's refusals of a query (syntax, an unknown column filter), not the database's troubles."""
    text = str(e)
    return text.startswith(("fts5:", "no such column", "unterminated string", "unknown special query"))


def _dump(value) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False)


def _load(text: str | None):
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def _iso(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(created))


__all__ = ["AudioRef", "Entry", "LogError", "Logbook", "log_path"]
