"""The project file: one SQLite document (.pld) holding data, settings, teacher calls, rules and results.

Document model: a *live document* (SQLite's application-file-format advice): every completed item is
committed as it happens, so there is no Save and a crash loses at most the items in flight. Save As is a
backup-API copy written atomically. The schema is versioned with sqlite-utils migrations; a file with
migrations this build does not know (a newer app) is refused before anything is written to it. The schema, those
checks and the errors live in core.storage; every statement run on an open project is a named method of `Project`.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from sqlite_utils import Database

from .domain import Conflict, Evaluation, Rule, RuleSetRecord, RuleSetSummary
from .states import EvaluationStatus
from .storage.errors import DiskFull as DiskFull  # the errors are re-exported: callers import them from here
from .storage.errors import ProjectFileError as ProjectFileError
from .storage.errors import ProjectInUse as ProjectInUse
from .storage.errors import ProjectTooNew as ProjectTooNew
from .storage.file_checks import (
    BUSY_TIMEOUT_S,
    check_header,
    friendly_sqlite_error,
    is_disk_full,
    is_locked_error,
    read_only_checks,
    recover_hot_journal,
    write_error,
)
from .storage.file_checks import in_use_message as in_use_message  # the CLI's words for a locked project
from .storage.schema import APPLICATION_ID as APPLICATION_ID  # tests read the header's id from here
from .storage.schema import migrations

# The SQLite errors a read can still raise past this layer (a file damaged after it was opened, a lock held
# beyond the busy timeout). Callers that report them catch these names, so no module outside the storage layer
# needs sqlite3 (tests/test_architecture.py checks that).
DatabaseError = sqlite3.DatabaseError
OperationalError = sqlite3.OperationalError


# Settings that name a rule-set version. One constant per key, read through `Project.rule_set_pointer`.
CHOSEN_RULE_SET = "chosen_rule_set_id"        # the pipeline's choice (phase 3's best on dev)
SYNTHESIS_RULE_SET = "synthesis_rule_set_id"  # phase 2's version
EDITED_RULE_SET = "edited_rule_set_id"        # the version the user last edited or picked (the editor's head)
RULE_SET_POINTERS = (CHOSEN_RULE_SET, SYNTHESIS_RULE_SET, EDITED_RULE_SET)
RuleSetPointer = str

# Other settings several modules read, each behind a typed accessor of `Project` below.
CHOSEN_PROMPT_SETTING = "chosen"              # phase 3's prompt choice on dev (core.pipeline.choose_prompt)
LAST_EVALUATION_SETTING = "last_evaluation"   # phase 4's evaluation id per prompt kind, and the version scored

# Keys that must never be stored in the project file (secrets live in the keyring or the environment).
_SECRET_MARKERS = ("api_key", "apikey", "secret", "password", "token_value")


# ---------------------------------------------------------------------------
# Plain records returned to callers
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Example:
    id: int
    ext_id: str
    text: str
    label: str
    split: str
    group: str | None = None


@dataclass(frozen=True)
class NewCluster:
    """One cluster to store: its label, index within the label (negative for noise), map centre and members."""

    label: str
    index: int
    map_x: float
    map_y: float
    micro_rule_ids: tuple[int, ...]


def content_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class Project:
    """An open project file.

    Threading contract: one `Project` object is used by one thread at a time (an internal lock makes
    concurrent use safe but serial). Worker threads return results to the phase thread, which writes.
    """

    def __init__(self, path: Path, conn: sqlite3.Connection, *, read_only: bool = False) -> None:
        self.path = path
        self.read_only = read_only
        self._conn = conn
        self.lock = threading.RLock()
        self.run_id: int | None = None
        self._txn_depth = 0  # open `transaction()` blocks (nested ones join the outermost)
        self._rule_sets: dict[int, RuleSetRecord] = {}  # parsed versions by id; a rollback empties it

    # -- opening ------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike[str], *, overwrite: bool = False) -> Project:
        """A new, empty project at `path`."""
        # return-value: with keep_open=True build returns the open project, never None.
        return cls.build(path, lambda project: None, overwrite=overwrite, keep_open=True)  # type: ignore[return-value]

    @classmethod
    def build(cls, path: str | os.PathLike[str], fill: Any, *, overwrite: bool = False,
              keep_open: bool = False) -> Project | None:
        """Create a project beside `path`, let `fill(project)` add its content, then move it into place.

        The user's name only ever holds a complete project: a failure in `fill` leaves any existing file
        untouched, and `overwrite` replaces only an existing PLD project (never a CSV or a folder).
        """
        path = Path(path)
        if path.is_dir():
            raise ProjectFileError(f"{path} is a folder; choose a file name such as {path / 'project.pld'}.")
        if path.exists():
            if not overwrite:
                raise ProjectFileError(f"{path} already exists; choose another name or pass --force.")
            check_header(path)  # refuses to overwrite anything that is not a PLD project
        if not path.parent.exists():
            raise ProjectFileError(f"The folder {path.parent} does not exist.")
        if not os.access(path.parent, os.W_OK):
            raise ProjectFileError(f"Cannot create {path.name}: the folder {path.parent} is not writable.")
        from .run_lock import RunLock
        # Held until the new file is in place: refuses to replace a project a run is using (ProjectInUse), and
        # a run cannot start on a name while it is being replaced.
        lock = RunLock(path, "init").acquire()
        tmp = path.with_name(path.name + ".creating")
        conn: sqlite3.Connection | None = None
        try:
            tmp.unlink(missing_ok=True)
            conn = sqlite3.connect(tmp, check_same_thread=False)
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            migrations.apply(Database(conn))
            project = cls(tmp, conn)
            fill(project)
            conn.close()
            conn = None
            os.replace(tmp, path)
        except sqlite3.Error as exc:
            why = friendly_sqlite_error(path, exc) if isinstance(exc, sqlite3.OperationalError) else exc
            kind = DiskFull if is_disk_full(exc) else ProjectFileError
            raise kind(f"Cannot create {path.name}: {why}") from None
        except OSError as exc:
            kind = DiskFull if is_disk_full(exc) else ProjectFileError
            raise kind(f"Cannot create {path.name}: {exc.strerror or exc}.") from None
        finally:
            if conn is not None:
                try:
                    conn.close()
                except sqlite3.Error:  # best effort before removing the partial file
                    pass
            # The partial file and its journal (left when a write failed mid-transaction, e.g. on a full disk).
            for leftover in (tmp, tmp.with_name(tmp.name + "-journal")):
                try:
                    leftover.unlink(missing_ok=True)
                except OSError:
                    pass
            lock.release()
        return cls.open(path) if keep_open else None

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, read_only: bool = False) -> Project:
        path = Path(path)
        if not path.exists():
            raise ProjectFileError(f"Project file not found: {path}")
        check_header(path)
        recover_hot_journal(path)
        read_only_checks(path)
        if not read_only and not os.access(path, os.W_OK):
            raise ProjectFileError(f"{path.name} is read-only; open it read-only or copy it somewhere writable.")
        if not read_only and not os.access(path.parent, os.W_OK):
            # SQLite needs to create a journal file beside the document.
            raise ProjectFileError(f"The folder of {path.name} is not writable, so changes cannot be saved safely.")
        if read_only:
            conn = sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True, check_same_thread=False,
                                   timeout=BUSY_TIMEOUT_S)
        else:
            conn = sqlite3.connect(path, check_same_thread=False, timeout=BUSY_TIMEOUT_S)
            try:
                conn.execute("PRAGMA journal_mode = DELETE")  # one file the user can copy or mail
                conn.execute("PRAGMA foreign_keys = ON")
                db = Database(conn)
                if migrations.pending(db):  # upgrade an older file step by step, each in a transaction
                    migrations.apply(db)
            except sqlite3.OperationalError as exc:
                conn.close()
                if is_locked_error(exc):
                    raise ProjectInUse(in_use_message(path)) from None
                raise write_error(path, exc) from None
        return cls(path, conn, read_only=read_only)

    def close(self) -> None:
        with self.lock:
            self._conn.close()

    def __enter__(self) -> Project:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def integrity_check(self) -> str:
        with self.lock:
            return str(self._conn.execute("PRAGMA integrity_check").fetchone()[0])

    def save_as(self, target: str | os.PathLike[str]) -> Path:
        """Copy the live document with the backup API into a temp file beside the target, then replace."""
        target = Path(target)
        tmp = target.with_name(target.name + ".saving")
        with self.lock:
            dst = sqlite3.connect(tmp)
            try:
                self._conn.backup(dst)
            finally:
                dst.close()
        os.replace(tmp, target)
        return target

    # -- low-level helpers (private: every statement lives in a named method of this class) ----------
    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with self.lock:
            cur = self._conn.execute(sql, params)
            cols = [c[0] for c in cur.description]
            return [dict(zip(cols, row)) for row in cur.fetchall()]

    def _write(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one write in its own transaction (commit per completed item) and return lastrowid.

        Inside `transaction()` the write joins that transaction instead (committed with it).
        """
        if self.read_only:
            raise ProjectFileError(f"{self.path.name} is open read-only.")
        with self.lock:
            try:
                if self._txn_depth:  # `with conn:` would commit the open transaction early
                    cur = self._conn.execute(sql, params)
                else:
                    with self._conn:
                        cur = self._conn.execute(sql, params)
            except sqlite3.OperationalError as exc:
                raise write_error(self.path, exc) from None
            return cur.lastrowid or 0

    def transaction(self) -> _Txn:
        if self.read_only:
            raise ProjectFileError(f"{self.path.name} is open read-only.")
        return _Txn(self)

    # -- settings (never secrets) --------------------------------------------------------
    def set_setting(self, key: str, value: Any) -> None:
        lowered = key.lower()
        if any(marker in lowered for marker in _SECRET_MARKERS):
            raise ValueError(f"Refusing to store '{key}' in the project file: secrets live in the OS keyring.")
        self._write("INSERT INTO settings (key, value) VALUES (?, ?) "
                    "ON CONFLICT(key) DO UPDATE SET value = excluded.value", [key, json.dumps(value)])

    def get_setting(self, key: str, default: Any = None) -> Any:
        rows = self._query("SELECT value FROM settings WHERE key = ?", [key])
        return json.loads(rows[0]["value"]) if rows else default

    def settings(self) -> dict[str, Any]:
        return {r["key"]: json.loads(r["value"]) for r in self._query("SELECT key, value FROM settings")}

    # -- rule-set pointers (typed accessors for the settings that name a version) -----------------
    def rule_set_pointer(self, key: RuleSetPointer) -> int | None:
        """The version a pointer setting names, or None when unset or when that version is not in the file."""
        if key not in RULE_SET_POINTERS:
            raise ValueError(f"'{key}' is not a rule-set pointer; use one of {', '.join(RULE_SET_POINTERS)}.")
        value = self.get_setting(key)
        if value is None:
            return None
        try:
            rs_id = int(value)
        except (TypeError, ValueError):
            return None
        return rs_id if self._query("SELECT 1 FROM rule_sets WHERE id = ?", [rs_id]) else None

    def set_rule_set_pointer(self, key: RuleSetPointer, rule_set_id: int | None) -> None:
        """Point `key` at an existing version (None clears it); an unknown version is refused."""
        if key not in RULE_SET_POINTERS:
            raise ValueError(f"'{key}' is not a rule-set pointer; use one of {', '.join(RULE_SET_POINTERS)}.")
        if rule_set_id is None:
            self._write("DELETE FROM settings WHERE key = ?", [key])
            return
        # A look-up, not self.rule_set(): parsing a 200-rule version only to see that it exists cost each edit
        # ~20 ms of the window's thread.
        if not self._query("SELECT 1 FROM rule_sets WHERE id = ?", [int(rule_set_id)]):
            raise ProjectFileError(f"There is no rule-set version {int(rule_set_id)} in this project.")
        self.set_setting(key, int(rule_set_id))

    # -- the pipeline's latest choice and test scores (typed accessors for their settings) ---------------
    def chosen_prompt(self) -> dict[str, Any]:
        """Phase 3's prompt choice (rule_set, prompt, dev scores, calibrated, warning...); {} before phase 3."""
        chosen: dict[str, Any] = self.get_setting(CHOSEN_PROMPT_SETTING) or {}
        return chosen

    def set_chosen_prompt(self, chosen: dict[str, Any]) -> None:
        self.set_setting(CHOSEN_PROMPT_SETTING, chosen)

    def last_evaluation(self) -> dict[str, Any]:
        """Phase 4's latest run: evaluation id per prompt kind ("pld", "zero_shot"...) and "rule_set_id"."""
        last: dict[str, Any] = self.get_setting(LAST_EVALUATION_SETTING) or {}
        return last

    def set_last_evaluation(self, last: dict[str, Any]) -> None:
        self.set_setting(LAST_EVALUATION_SETTING, last)

    def evaluations_done(self) -> list[Evaluation]:
        """Every finished evaluation (no predictions), oldest first."""
        rows = self._query("SELECT * FROM evaluations WHERE status = 'done' ORDER BY id")
        return [Evaluation.from_row(r) for r in rows]

    def rule_set_parents(self) -> dict[int, int | None]:
        """id -> parent id for every version (cheap: no rule bodies)."""
        return {r["id"]: r["parent_id"] for r in self._query("SELECT id, parent_id FROM rule_sets")}

    # -- dataset ----------------------------------------------------------------
    def has_dataset(self) -> bool:
        return bool(self._query("SELECT 1 FROM dataset"))

    def store_dataset(self, dataset: Any, source_name: str) -> None:
        """Store an `ImportedDataset` (see core.dataset) in one transaction. Refuses to replace data."""
        if self.has_dataset():
            raise ProjectFileError("This project already has a dataset; create a new project for another CSV.")
        with self.transaction() as conn:
            conn.executemany(
                "INSERT INTO examples (ext_id, source_row, text, label, split, grp) VALUES (?, ?, ?, ?, ?, ?)",
                dataset.rows.records())
            conn.execute(
                "INSERT INTO dataset (id, source_name, source_sha256, encoding, mapping_json, split_json, "
                "labels_json, columns_json, dataset_hash, n_rows, imported_at) VALUES (1,?,?,?,?,?,?,?,?,?,?)",
                [source_name, dataset.source_sha256, dataset.encoding, json.dumps(dataset.mapping.to_json()),
                 json.dumps(dataset.split_settings.to_json()), json.dumps(dataset.labels),
                 json.dumps(dataset.columns), dataset.dataset_hash(), len(dataset.rows), time.time()])

    def dataset_info(self) -> dict[str, Any] | None:
        rows = self._query("SELECT * FROM dataset")
        if not rows:
            return None
        info = rows[0]
        for key in ("mapping_json", "split_json", "labels_json", "columns_json"):
            try:
                info[key[:-5]] = json.loads(info.pop(key))
            except (TypeError, ValueError):
                raise ProjectFileError(f"{self.path.name} is damaged: its stored {key[:-5]} cannot be read.") from None
        # Shapes every caller relies on, checked once here: a file edited by hand or by another tool is
        # refused with words instead of failing deep inside a phase or a status line.
        labels, columns = info["labels"], info["columns"]
        if not (isinstance(labels, list) and labels and all(isinstance(x, str) for x in labels)):
            raise ProjectFileError(f"{self.path.name} is damaged: its stored labels are not a list of names.")
        if not (isinstance(columns, list) and all(isinstance(x, str) for x in columns)):
            raise ProjectFileError(f"{self.path.name} is damaged: its stored columns are not a list of names.")
        if not isinstance(info["mapping"], dict) or not isinstance(info["split"], dict):
            raise ProjectFileError(f"{self.path.name} is damaged: its stored column mapping or split is unreadable.")
        return info

    def labels(self) -> list[str]:
        info = self.dataset_info()
        if info is None:
            raise ProjectFileError("The project has no dataset yet; import a CSV first.")
        return list(info["labels"])

    def examples(self, split: str | None = None, ids: Iterable[int] | None = None) -> list[Example]:
        sql = "SELECT id, ext_id, text, label, split, grp FROM examples"
        params: list[Any] = []
        if split is not None:
            sql += " WHERE split = ?"
            params.append(split)
        sql += " ORDER BY id"
        rows = [Example(r["id"], r["ext_id"], r["text"], r["label"], r["split"], r["grp"])
                for r in self._query(sql, params)]
        if ids is not None:
            wanted = set(ids)
            rows = [r for r in rows if r.id in wanted]
        return rows

    def split_of(self, example_ids: Iterable[int]) -> dict[int, str]:
        ids = list(example_ids)
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        return {r["id"]: r["split"] for r in self._query(f"SELECT id, split FROM examples WHERE id IN ({marks})", ids)}

    # -- runs and phase states --------------------------------------------------------
    def start_run(self, command: str, settings: dict[str, Any]) -> int:
        # Runs left "running" by a crash are marked as interrupted so the history stays truthful.
        self._write("UPDATE runs SET status = 'interrupted' WHERE status = 'running'")
        self.run_id = self._write("INSERT INTO runs (started_at, status, command, settings_json) VALUES (?,?,?,?)",
                                  [time.time(), "running", command, json.dumps(settings)])
        return self.run_id

    def finish_run(self, status: str) -> None:
        if self.run_id is not None:
            self._write("UPDATE runs SET status = ?, finished_at = ? WHERE id = ?", [status, time.time(), self.run_id])

    def set_phase(self, phase: int, state: str, done: int = 0, total: int = 0, message: str = "") -> None:
        self._write("INSERT INTO phases (phase, state, done, total, message, run_id, updated_at) "
                    "VALUES (?,?,?,?,?,?,?) ON CONFLICT(phase) DO UPDATE SET state=excluded.state, "
                    "done=excluded.done, total=excluded.total, message=excluded.message, "
                    "run_id=excluded.run_id, updated_at=excluded.updated_at",
                    [phase, state, done, total, message, self.run_id, time.time()])

    def phase_states(self) -> dict[int, dict[str, Any]]:
        return {r["phase"]: r for r in self._query("SELECT * FROM phases ORDER BY phase")}

    # -- teacher calls --------------------------------------------------------------------
    def cached_teacher_reply(self, request_hash: str) -> dict[str, Any] | None:
        rows = self._query("SELECT * FROM teacher_calls WHERE request_hash = ? AND status = 'ok' "
                          "ORDER BY id DESC LIMIT 1", [request_hash])
        return rows[0] if rows else None

    def record_teacher_call(self, **fields: Any) -> int:
        fields.setdefault("created_at", time.time())
        fields.setdefault("run_id", self.run_id)
        cols = ",".join(fields)
        return self._write(f"INSERT INTO teacher_calls ({cols}) VALUES ({','.join('?' * len(fields))})",
                           list(fields.values()))

    def teacher_totals(self, kinds: Sequence[str] | None = None) -> dict[str, Any]:
        """Calls, tokens and cost so far; `kinds` narrows to request kinds (e.g. one phase's)."""
        where, params = "", []
        if kinds is not None:
            where = f" WHERE kind IN ({','.join('?' * len(kinds))})"
            params = list(kinds)
        row = self._query(
            "SELECT COUNT(*) AS calls, SUM(status = 'ok') AS ok, SUM(status != 'ok') AS failed, "
            "COALESCE(SUM(prompt_tokens), 0) AS prompt_tokens, COALESCE(SUM(output_tokens), 0) AS output_tokens, "
            "COALESCE(SUM(thoughts_tokens), 0) AS thoughts_tokens, COALESCE(SUM(total_tokens), 0) AS total_tokens, "
            "COALESCE(SUM(cost_usd), 0) AS cost_usd FROM teacher_calls" + where, params)[0]
        return {k: (v or 0) for k, v in row.items()}

    def failed_items(self, phase: int | None = None) -> list[dict[str, Any]]:
        if phase is None:
            return self._query("SELECT * FROM failed_items ORDER BY id")
        return self._query("SELECT * FROM failed_items WHERE phase = ? ORDER BY id", [phase])

    def record_failure(self, phase: int, item_key: str, reason: str) -> None:
        self._write("INSERT INTO failed_items (phase, item_key, reason, run_id, created_at) VALUES (?,?,?,?,?)",
                    [phase, item_key, reason, self.run_id, time.time()])

    # -- given-up teacher requests (a rerun does not send them again; see teacher_calls) ---------------
    def given_up_requests(self) -> dict[str, dict[str, Any]]:
        """request_hash -> {"phase", "key", "reason"} of every request given up after its attempts."""
        return dict(self.get_setting("given_up_requests") or {})

    def mark_given_up(self, request_hash: str, phase: int, item_key: str, reason: str) -> None:
        marks = self.given_up_requests()
        marks[request_hash] = {"phase": phase, "key": item_key, "reason": reason[:500]}
        self.set_setting("given_up_requests", marks)

    def clear_given_up(self, phases: Iterable[int] | None = None) -> int:
        """Forget the given-up marks (of `phases`, or all) so the next run retries them; returns how many."""
        marks = self.given_up_requests()
        wanted = None if phases is None else set(phases)
        keep = {h: m for h, m in marks.items() if wanted is not None and m.get("phase") not in wanted}
        self.set_setting("given_up_requests", keep)
        return len(marks) - len(keep)

    # -- remote teacher batch jobs ------------------------------------------------------
    def add_teacher_batch(self, name: str, *, phase: int, model: str, state: str,
                          items: Sequence[tuple[str, str]]) -> int:
        """Record a submitted batch job and its (request_hash, item_key) pairs in one transaction."""
        now = time.time()
        with self.transaction() as conn:
            batch_id = conn.execute(
                "INSERT INTO teacher_batches (name, phase, model, state, n_requests, run_id, created_at, updated_at) "
                "VALUES (?,?,?,?,?,?,?,?)", [name, phase, model, state, len(items), self.run_id, now, now]).lastrowid
            conn.executemany("INSERT OR IGNORE INTO teacher_batch_requests (batch_id, request_hash, item_key) "
                             "VALUES (?,?,?)", [(batch_id, h, key) for h, key in items])
        return int(batch_id or 0)

    def update_teacher_batch(self, batch_id: int, *, state: str, message: str | None = None,
                             merged: bool | None = None) -> None:
        sets, params = ["state = ?", "updated_at = ?"], [state, time.time()]
        if message is not None:
            sets.append("message = ?")
            params.append(message)
        if merged is not None:
            sets.append("merged = ?")
            params.append(int(merged))
        self._write(f"UPDATE teacher_batches SET {', '.join(sets)} WHERE id = ?", [*params, batch_id])

    def teacher_batches(self, phase: int | None = None, *, open_only: bool = False) -> list[dict[str, Any]]:
        """Batch jobs, oldest first; `open_only` keeps those whose results are not merged and that did not end badly."""
        where, params = [], []
        if phase is not None:
            where.append("phase = ?")
            params.append(phase)
        if open_only:
            where.append("merged = 0 AND state IN ('submitted', 'pending', 'running', 'succeeded')")
        sql = "SELECT * FROM teacher_batches" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id"
        return self._query(sql, params)

    def merge_teacher_batch(self, batch_id: int, calls: Sequence[dict[str, Any]]) -> list[int]:
        """Record a finished batch's replies as teacher calls and flag the batch merged, all in one transaction,
        so a crash during the merge neither loses replies nor records them twice on the next run."""
        ids: list[int] = []
        now = time.time()
        with self.transaction() as conn:
            for fields in calls:
                fields = {"created_at": now, "run_id": self.run_id, **fields}
                cols = ",".join(fields)
                cur = conn.execute(f"INSERT INTO teacher_calls ({cols}) VALUES ({','.join('?' * len(fields))})",
                                   list(fields.values()))
                ids.append(int(cur.lastrowid or 0))
            conn.execute("UPDATE teacher_batches SET state = 'succeeded', merged = 1, updated_at = ? WHERE id = ?",
                         [now, batch_id])
        return ids

    def teacher_batch_requests(self, batch_id: int) -> dict[str, str]:
        """request_hash -> item_key for one batch job, in submission order."""
        rows = self._query("SELECT request_hash, item_key FROM teacher_batch_requests WHERE batch_id = ? "
                          "ORDER BY rowid", [batch_id])
        return {r["request_hash"]: r["item_key"] for r in rows}

    # -- micro-rules --------------------------------------------------------------------
    def micro_rules(self) -> list[dict[str, Any]]:
        return self._query("SELECT m.*, e.label AS gold_label, e.ext_id FROM micro_rules m "
                          "JOIN examples e ON e.id = m.example_id ORDER BY m.id")

    def micro_rule_example_ids(self) -> set[int]:
        return {r["example_id"] for r in self._query("SELECT example_id FROM micro_rules")}

    def add_micro_rule(self, example_id: int, reasoning: str, rule: str, label: str, teacher_call_id: int) -> int:
        return self._write("INSERT OR IGNORE INTO micro_rules (example_id, reasoning, rule, label, teacher_call_id, "
                           "created_at) VALUES (?,?,?,?,?,?)",
                           [example_id, reasoning, rule, label, teacher_call_id, time.time()])

    def add_micro_rules(self, rows: Iterable[tuple[int, str, str, str, int]]) -> None:
        """Many (example_id, reasoning, rule, label, teacher_call_id) micro-rules in one transaction."""
        now = time.time()
        with self.transaction() as conn:
            conn.executemany("INSERT OR IGNORE INTO micro_rules (example_id, reasoning, rule, label, teacher_call_id, "
                             "created_at) VALUES (?,?,?,?,?,?)", [(*row, now) for row in rows])

    # -- embeddings -------------------------------------------------------------------------
    def cached_embeddings(self, model: str, text_hashes: Sequence[str]) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for start in range(0, len(text_hashes), 500):
            chunk = list(text_hashes[start:start + 500])
            marks = ",".join("?" * len(chunk))
            for r in self._query(f"SELECT text_hash, vector FROM embeddings WHERE model = ? AND text_hash IN ({marks})",
                                [model, *chunk]):
                out[r["text_hash"]] = r["vector"]
        return out

    def store_embeddings(self, model: str, items: Iterable[tuple[str, int, bytes]]) -> None:
        with self.transaction() as conn:
            conn.executemany("INSERT OR REPLACE INTO embeddings (model, text_hash, dim, vector) VALUES (?,?,?,?)",
                             [(model, h, d, v) for h, d, v in items])

    # -- rule sets ------------------------------------------------------------------------
    def add_rule_set(self, *, parent_id: int | None, reason: str, origin: str, round: int | None, task: str,
                     labels: Sequence[str], meanings: Mapping[str, str], rules: Sequence[Rule], prompt_text: str,
                     prompt_sha256: str) -> int:
        labels, meanings, stored = list(labels), dict(meanings), [r.to_dict() for r in rules]
        body = {"task": task, "labels": labels, "meanings": meanings, "rules": stored}
        return self._write(
            "INSERT INTO rule_sets (parent_id, reason, origin, round, task, labels_json, meanings_json, rules_json, "
            "prompt_text, prompt_sha256, content_hash, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            [parent_id, reason, origin, round, task, json.dumps(labels), json.dumps(meanings),
             json.dumps(stored, ensure_ascii=False), prompt_text, prompt_sha256, content_hash(body), time.time()])

    def find_rule_set(self, *, origin: str, parent_id: int | None, rules: Sequence[Rule], task: str,
                      labels: Sequence[str], meanings: Mapping[str, str]) -> int | None:
        """An identical version already saved (a resumed run must not duplicate versions)."""
        h = content_hash({"task": task, "labels": list(labels), "meanings": dict(meanings),
                          "rules": [r.to_dict() for r in rules]})
        rows = self._query("SELECT id FROM rule_sets WHERE content_hash = ? AND origin = ? AND parent_id IS ? "
                          "ORDER BY id LIMIT 1", [h, origin, parent_id])
        return rows[0]["id"] if rows else None

    def rule_set(self, rule_set_id: int) -> RuleSetRecord:
        """One version, parsed once per open project (versions never change; the record is frozen)."""
        if (cached := self._rule_sets.get(rule_set_id)) is not None:
            return cached
        rows = self._query("SELECT * FROM rule_sets WHERE id = ?", [rule_set_id])
        if not rows:
            raise ProjectFileError(f"There is no rule-set version {rule_set_id} in this project.")
        r = rows[0]
        record = RuleSetRecord(r["id"], r["parent_id"], r["reason"], r["origin"], r["round"], r["task"],
                               tuple(json.loads(r["labels_json"])), MappingProxyType(json.loads(r["meanings_json"])),
                               tuple(Rule.from_dict(d) for d in json.loads(r["rules_json"])), r["prompt_text"],
                               r["prompt_sha256"], r["created_at"])
        return self._rule_sets.setdefault(rule_set_id, record)

    def rule_sets(self) -> list[RuleSetSummary]:
        return [RuleSetSummary(**r) for r in self._query(
            "SELECT id, parent_id, reason, origin, round, prompt_sha256, created_at FROM rule_sets ORDER BY id")]

    def add_conflict(self, rule_set_id: int, rule_a: str, rule_b: str, source: str, reason: str,
                     evidence: Any) -> int:
        return self._write("INSERT INTO conflicts (rule_set_id, rule_a, rule_b, source, reason, evidence_json, "
                           "created_at) VALUES (?,?,?,?,?,?,?)",
                           [rule_set_id, rule_a, rule_b, source, reason, json.dumps(evidence, ensure_ascii=False),
                            time.time()])

    def conflicts(self, rule_set_id: int) -> list[Conflict]:
        rows = self._query("SELECT * FROM conflicts WHERE rule_set_id = ? ORDER BY id", [rule_set_id])
        return [Conflict.from_row(r) for r in rows]

    # -- evaluations ----------------------------------------------------------------------
    def get_or_create_evaluation(self, *, cache_key: str, kind: str, rule_set_id: int | None, split: str,
                                 prompt_text: str, prompt_sha256: str, student: dict[str, Any],
                                 n_examples: int) -> int:
        rows = self._query("SELECT id FROM evaluations WHERE cache_key = ?", [cache_key])
        if rows:
            return int(rows[0]["id"])
        return self._write(
            "INSERT INTO evaluations (cache_key, kind, rule_set_id, split, prompt_text, prompt_sha256, student_json, "
            "n_examples, status, created_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
            [cache_key, kind, rule_set_id, split, prompt_text, prompt_sha256, json.dumps(student), n_examples,
             EvaluationStatus.RUNNING, time.time()])

    def predictions(self, evaluation_id: int) -> dict[int, dict[str, Any]]:
        rows = self._query("SELECT * FROM predictions WHERE evaluation_id = ?", [evaluation_id])
        return {r["example_id"]: {"predicted": r["predicted"], "probs": json.loads(r["probs_json"]),
                                  "latency_s": r["latency_s"]} for r in rows}

    def prompt_predictions(self, prompt_sha256: str, student_sha256: str, n_ctx: int,
                           example_ids: Sequence[int], *, exclude_evaluation: int) -> dict[int, dict[str, Any]]:
        """Predictions any other evaluation already made for these examples with the same prompt and student
        (file sha256 and context size): the student is deterministic, so they are reused, not recomputed."""
        wanted = set(example_ids)
        if not wanted:
            return {}
        rows = self._query("SELECT p.example_id, p.predicted, p.probs_json, p.latency_s, e.student_json "
                          "FROM predictions p JOIN evaluations e ON e.id = p.evaluation_id "
                          "WHERE e.prompt_sha256 = ? AND e.id != ?", [prompt_sha256, exclude_evaluation])
        found: dict[int, dict[str, Any]] = {}
        for r in rows:
            if r["example_id"] not in wanted or r["example_id"] in found:
                continue
            student = json.loads(r["student_json"])
            if student.get("sha256") == student_sha256 and student.get("n_ctx") == n_ctx:
                found[r["example_id"]] = {"predicted": r["predicted"], "probs": json.loads(r["probs_json"]),
                                          "latency_s": r["latency_s"]}
        return found

    def add_prediction(self, evaluation_id: int, example_id: int, predicted: str, probs: dict[str, float],
                       latency_s: float) -> None:
        self._write("INSERT OR REPLACE INTO predictions (evaluation_id, example_id, predicted, probs_json, latency_s) "
                    "VALUES (?,?,?,?,?)", [evaluation_id, example_id, predicted, json.dumps(probs), latency_s])

    def finish_evaluation(self, evaluation_id: int, metrics: dict[str, Any]) -> None:
        self._write("UPDATE evaluations SET status = 'done', metrics_json = ?, finished_at = ? WHERE id = ?",
                    [json.dumps(metrics), time.time(), evaluation_id])

    def evaluation(self, evaluation_id: int) -> Evaluation:
        return Evaluation.from_row(self._query("SELECT * FROM evaluations WHERE id = ?", [evaluation_id])[0])

    def evaluations(self) -> list[Evaluation]:
        rows = self._query("SELECT id FROM evaluations ORDER BY id")
        return [self.evaluation(r["id"]) for r in rows]

    def done_evaluation_ids(self, *, rule_set_id: int, split: str, prompt_sha256: str) -> list[int]:
        """Finished evaluations of one rule set's prompt on one split, oldest first."""
        rows = self._query("SELECT id FROM evaluations WHERE rule_set_id = ? AND split = ? AND prompt_sha256 = ? "
                          "AND status = 'done' ORDER BY id", [rule_set_id, split, prompt_sha256])
        return [r["id"] for r in rows]

    def add_loop_round(self, **fields: Any) -> int:
        fields.setdefault("created_at", time.time())
        fields.setdefault("run_id", self.run_id)
        return self._write(f"INSERT INTO loop_rounds ({','.join(fields)}) VALUES ({','.join('?' * len(fields))})",
                           list(fields.values()))

    def find_loop_round(self, round: int, base_rule_set_id: int, candidate_rule_set_id: int | None) -> int | None:
        """The id of an identical recorded round (a rerun of the loop must not duplicate its history)."""
        rows = self._query("SELECT id FROM loop_rounds WHERE round = ? AND base_rule_set_id = ? AND "
                          "candidate_rule_set_id IS ? ORDER BY id LIMIT 1",
                          [round, base_rule_set_id, candidate_rule_set_id])
        return rows[0]["id"] if rows else None

    def loop_rounds(self) -> list[dict[str, Any]]:
        return self._query("SELECT * FROM loop_rounds ORDER BY id")

    def record_export(self, path: Path, fmt: str, sha256: str, rule_set_id: int | None,
                      evaluation_id: int | None) -> None:
        self._write("INSERT INTO exports (path, format, sha256, rule_set_id, evaluation_id, created_at) "
                    "VALUES (?,?,?,?,?,?)", [str(path), fmt, sha256, rule_set_id, evaluation_id, time.time()])

    def exports(self) -> list[dict[str, Any]]:
        """Every recorded export (path, format, sha256, version, evaluation), oldest first."""
        return self._query("SELECT * FROM exports ORDER BY id")

    # -- counts and histories the views and `pld status` show ------------------------------------
    def split_counts(self) -> dict[str, int]:
        """Examples per split ("train", "dev", "test"); a split without examples is absent."""
        return {r["split"]: r["n"] for r in self._query("SELECT split, COUNT(*) AS n FROM examples GROUP BY split")}

    def failed_item_count(self) -> int:
        """How many items any phase gave up on (every attempt counted, as `failed_items` lists them)."""
        return int(self._query("SELECT COUNT(*) AS n FROM failed_items")[0]["n"])

    def runs(self) -> list[dict[str, Any]]:
        """Every run (started_at, finished_at, status, command), oldest first."""
        return self._query("SELECT started_at, finished_at, status, command FROM runs ORDER BY id")

    def teacher_models(self) -> list[str]:
        """The teacher models that answered any call in this project, sorted."""
        return sorted({r["model"] for r in self._query("SELECT DISTINCT model FROM teacher_calls")})

    def loop_dev_scores(self) -> dict[int, float]:
        """Version id -> its dev macro-F1 as the closed loop measured it (as a candidate, else as a round's base)."""
        scores = {r["candidate_rule_set_id"]: r["dev_macro_f1"] for r in self._query(
            "SELECT candidate_rule_set_id, dev_macro_f1 FROM loop_rounds WHERE candidate_rule_set_id IS NOT NULL")}
        for r in self._query("SELECT base_rule_set_id, base_dev_macro_f1 FROM loop_rounds "
                             "WHERE base_dev_macro_f1 IS NOT NULL"):
            scores.setdefault(r["base_rule_set_id"], r["base_dev_macro_f1"])
        return scores

    # -- clusterings (phase 2) ----------------------------------------------------------------
    def has_clustering(self, key: str) -> bool:
        return bool(self._query("SELECT 1 FROM clusterings WHERE key = ?", [key]))

    def store_clustering(self, key: str, *, method: str, params: dict[str, Any], report: dict[str, Any],
                         clusters: Sequence[NewCluster]) -> None:
        """One clustering with its clusters and their members, in one transaction."""
        with self.transaction() as conn:
            conn.execute("INSERT INTO clusterings (key, method, params_json, report_json, created_at) "
                         "VALUES (?,?,?,?,?)", [key, method, json.dumps(params), json.dumps(report), time.time()])
            for c in clusters:
                cur = conn.execute(
                    "INSERT INTO clusters (clustering_key, label, cluster_index, is_noise, size, map_x, map_y) "
                    "VALUES (?,?,?,?,?,?,?)",
                    [key, c.label, c.index, int(c.index < 0), len(c.micro_rule_ids), c.map_x, c.map_y])
                conn.executemany("INSERT INTO cluster_members (cluster_id, micro_rule_id) VALUES (?,?)",
                                 [(cur.lastrowid, mid) for mid in c.micro_rule_ids])

    def latest_clustering_key(self) -> str | None:
        rows = self._query("SELECT key FROM clusterings ORDER BY rowid DESC LIMIT 1")
        return rows[0]["key"] if rows else None

    def clustering_report(self, key: str) -> dict[str, Any]:
        """The stored report of clustering `key` (per-label method and the 2-D map points), decoded."""
        row = self._query("SELECT report_json FROM clusterings WHERE key = ?", [key])[0]
        report: dict[str, Any] = json.loads(row["report_json"] or "{}")
        return report

    def clusters(self, key: str) -> list[dict[str, Any]]:
        """The clusters of clustering `key` (by label, then index), each with its sorted `micro_rule_ids`."""
        clusters = self._query("SELECT * FROM clusters WHERE clustering_key = ? ORDER BY label, cluster_index, id",
                               [key])
        for c in clusters:
            c["micro_rule_ids"] = [r["micro_rule_id"] for r in self._query(
                "SELECT micro_rule_id FROM cluster_members WHERE cluster_id = ? ORDER BY micro_rule_id", [c["id"]])]
        return clusters

    def noise_micro_rules(self) -> list[dict[str, Any]]:
        """Micro-rules the latest clustering left as noise (id, rule, label, ext_id), by id."""
        return self._query(
            "SELECT m.id, m.rule, m.label, e.ext_id FROM clusters c JOIN cluster_members cm ON cm.cluster_id = c.id "
            "JOIN micro_rules m ON m.id = cm.micro_rule_id JOIN examples e ON e.id = m.example_id "
            "WHERE c.is_noise = 1 AND c.clustering_key = (SELECT key FROM clusterings ORDER BY rowid DESC LIMIT 1) "
            "ORDER BY m.id")


class _Txn:
    """`with project.transaction() as conn:` - several writes committed together or not at all.

    The Project's own writes inside the block join it; a nested block joins the outermost one (which commits or
    rolls back everything).
    """

    def __init__(self, project: Project) -> None:
        self.project = project

    def __enter__(self) -> sqlite3.Connection:
        self.project.lock.acquire()
        if self.project._txn_depth == 0:
            try:
                self.project._conn.execute("BEGIN")
            except BaseException:
                self.project.lock.release()
                raise
        self.project._txn_depth += 1
        return self.project._conn

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        conn = self.project._conn
        self.project._txn_depth -= 1
        if self.project._txn_depth:  # nested: the outermost block commits or rolls back
            self.project.lock.release()
            return
        try:
            if exc_type is None:
                try:
                    conn.execute("COMMIT")
                except sqlite3.OperationalError as err:
                    self._rollback()
                    raise write_error(self.project.path, err) from None
            else:
                self._rollback()
                if isinstance(exc, sqlite3.OperationalError):  # e.g. a full disk during an insert
                    raise write_error(self.project.path, exc) from None
        finally:
            self.project.lock.release()

    def _rollback(self) -> None:
        # SQLite has already rolled back by itself after some errors (SQLITE_FULL, SQLITE_IOERR); a second
        # ROLLBACK would then fail with "cannot rollback - no transaction is active" and hide the real error.
        conn = self.project._conn
        self.project._rule_sets.clear()  # a version read inside the transaction may be gone, its id reused
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.OperationalError:
                pass
