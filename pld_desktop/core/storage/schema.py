"""The project file's schema: the application id in its header and the migrations, applied step by step.

A file that records a migration this build does not know (`KNOWN_MIGRATIONS`) was written by a newer app and is
refused before anything is written to it (core.storage.file_checks).
"""

from __future__ import annotations

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

APPLICATION_ID = 0x504C4444  # "PLDD" at header offset 68
SQLITE_MAGIC = b"SQLite format 3\x00"
MIGRATION_SET = "pld_desktop"

migrations = Migrations(MIGRATION_SET)


@migrations()
def m001_initial(db: Database) -> None:
    db.executescript(
        """
        CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);

        CREATE TABLE dataset (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            source_name TEXT, source_sha256 TEXT, encoding TEXT,
            mapping_json TEXT NOT NULL, split_json TEXT NOT NULL,
            labels_json TEXT NOT NULL, columns_json TEXT NOT NULL,
            dataset_hash TEXT NOT NULL, n_rows INTEGER NOT NULL, imported_at REAL NOT NULL);

        CREATE TABLE examples (
            id INTEGER PRIMARY KEY, ext_id TEXT NOT NULL UNIQUE, source_row INTEGER NOT NULL,
            text TEXT NOT NULL, label TEXT NOT NULL,
            split TEXT NOT NULL CHECK (split IN ('train', 'dev', 'test')), grp TEXT);
        CREATE INDEX examples_split ON examples (split);

        CREATE TABLE runs (
            id INTEGER PRIMARY KEY, started_at REAL NOT NULL, finished_at REAL,
            status TEXT NOT NULL, command TEXT, settings_json TEXT);

        CREATE TABLE phases (
            phase INTEGER PRIMARY KEY, state TEXT NOT NULL, done INTEGER NOT NULL DEFAULT 0,
            total INTEGER NOT NULL DEFAULT 0, message TEXT, run_id INTEGER, updated_at REAL NOT NULL);

        CREATE TABLE teacher_calls (
            id INTEGER PRIMARY KEY, request_hash TEXT NOT NULL, kind TEXT NOT NULL, model TEXT NOT NULL,
            example_id INTEGER, request_json TEXT NOT NULL, response_text TEXT,
            status TEXT NOT NULL CHECK (status IN ('ok', 'invalid', 'error')), error TEXT,
            prompt_tokens INTEGER NOT NULL DEFAULT 0, output_tokens INTEGER NOT NULL DEFAULT 0,
            thoughts_tokens INTEGER NOT NULL DEFAULT 0, total_tokens INTEGER NOT NULL DEFAULT 0,
            cost_usd REAL NOT NULL DEFAULT 0, latency_s REAL NOT NULL DEFAULT 0,
            attempt INTEGER NOT NULL DEFAULT 1, run_id INTEGER, created_at REAL NOT NULL);
        CREATE INDEX teacher_calls_hash ON teacher_calls (request_hash, status);

        CREATE TABLE micro_rules (
            id INTEGER PRIMARY KEY, example_id INTEGER NOT NULL UNIQUE REFERENCES examples(id),
            reasoning TEXT NOT NULL, rule TEXT NOT NULL, label TEXT NOT NULL,
            teacher_call_id INTEGER REFERENCES teacher_calls(id), created_at REAL NOT NULL);

        CREATE TABLE failed_items (
            id INTEGER PRIMARY KEY, phase INTEGER NOT NULL, item_key TEXT NOT NULL, reason TEXT NOT NULL,
            run_id INTEGER, created_at REAL NOT NULL);

        CREATE TABLE embeddings (
            model TEXT NOT NULL, text_hash TEXT NOT NULL, dim INTEGER NOT NULL, vector BLOB NOT NULL,
            PRIMARY KEY (model, text_hash));

        CREATE TABLE clusterings (
            key TEXT PRIMARY KEY, method TEXT NOT NULL, params_json TEXT NOT NULL,
            report_json TEXT NOT NULL, created_at REAL NOT NULL);
        CREATE TABLE clusters (
            id INTEGER PRIMARY KEY, clustering_key TEXT NOT NULL REFERENCES clusterings(key),
            label TEXT NOT NULL, cluster_index INTEGER NOT NULL, is_noise INTEGER NOT NULL,
            size INTEGER NOT NULL, map_x REAL, map_y REAL);
        CREATE TABLE cluster_members (
            cluster_id INTEGER NOT NULL REFERENCES clusters(id), micro_rule_id INTEGER NOT NULL,
            PRIMARY KEY (cluster_id, micro_rule_id));

        CREATE TABLE rule_sets (
            id INTEGER PRIMARY KEY, parent_id INTEGER REFERENCES rule_sets(id),
            reason TEXT NOT NULL, origin TEXT NOT NULL, round INTEGER,
            task TEXT NOT NULL, labels_json TEXT NOT NULL, meanings_json TEXT NOT NULL,
            rules_json TEXT NOT NULL, prompt_text TEXT NOT NULL, prompt_sha256 TEXT NOT NULL,
            content_hash TEXT NOT NULL, created_at REAL NOT NULL);
        CREATE INDEX rule_sets_content ON rule_sets (content_hash);
        -- Rule sets are immutable; a trigger makes that a property of the file, not of the code.
        CREATE TRIGGER rule_sets_immutable BEFORE UPDATE ON rule_sets
            BEGIN SELECT RAISE(ABORT, 'rule-set versions are immutable'); END;

        CREATE TABLE conflicts (
            id INTEGER PRIMARY KEY, rule_set_id INTEGER NOT NULL REFERENCES rule_sets(id),
            rule_a TEXT NOT NULL, rule_b TEXT NOT NULL, source TEXT NOT NULL,
            reason TEXT NOT NULL, evidence_json TEXT NOT NULL, created_at REAL NOT NULL);

        CREATE TABLE evaluations (
            id INTEGER PRIMARY KEY, cache_key TEXT NOT NULL UNIQUE, kind TEXT NOT NULL,
            rule_set_id INTEGER REFERENCES rule_sets(id), split TEXT NOT NULL,
            prompt_text TEXT NOT NULL, prompt_sha256 TEXT NOT NULL,
            student_json TEXT NOT NULL, n_examples INTEGER NOT NULL,
            status TEXT NOT NULL, metrics_json TEXT, created_at REAL NOT NULL, finished_at REAL);
        CREATE TABLE predictions (
            evaluation_id INTEGER NOT NULL REFERENCES evaluations(id), example_id INTEGER NOT NULL,
            predicted TEXT NOT NULL, probs_json TEXT NOT NULL, latency_s REAL NOT NULL,
            PRIMARY KEY (evaluation_id, example_id));

        CREATE TABLE loop_rounds (
            id INTEGER PRIMARY KEY, round INTEGER NOT NULL, base_rule_set_id INTEGER NOT NULL,
            candidate_rule_set_id INTEGER, dev_macro_f1 REAL, base_dev_macro_f1 REAL,
            accepted INTEGER NOT NULL DEFAULT 0, root_cause TEXT, run_id INTEGER, created_at REAL NOT NULL);

        CREATE TABLE exports (
            id INTEGER PRIMARY KEY, path TEXT NOT NULL, format TEXT NOT NULL, sha256 TEXT NOT NULL,
            rule_set_id INTEGER, evaluation_id INTEGER, created_at REAL NOT NULL);
        """
    )


@migrations()
def m002_teacher_batches(db: Database) -> None:
    # Remote batch jobs (Gemini Batch API) outlive the process that submitted them: the job name and the
    # request hashes it carries are kept so that a later run polls the job instead of submitting it again.
    db.executescript(
        """
        CREATE TABLE teacher_batches (
            id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, phase INTEGER NOT NULL, model TEXT NOT NULL,
            state TEXT NOT NULL, n_requests INTEGER NOT NULL, message TEXT, merged INTEGER NOT NULL DEFAULT 0,
            run_id INTEGER, created_at REAL NOT NULL, updated_at REAL NOT NULL);
        CREATE TABLE teacher_batch_requests (
            batch_id INTEGER NOT NULL REFERENCES teacher_batches(id), request_hash TEXT NOT NULL,
            item_key TEXT NOT NULL, PRIMARY KEY (batch_id, request_hash));
        """
    )


KNOWN_MIGRATIONS = ("m001_initial", "m002_teacher_batches")
