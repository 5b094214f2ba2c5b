"""Beneath `core.project.Project`: the project file's schema, the checks it passes on open, and its errors.

With core/project.py, schema.py and file_checks.py are the storage layer: the only modules that may hold SQL or
use the database driver (tests/test_architecture.py, STORAGE). Callers import `Project` and the errors from
core.project, never from here.
"""
