"""Paths of the files shipped with the app (demo dataset, icons), in a source checkout or a bundle."""

from __future__ import annotations

import sys
from pathlib import Path


def resources_dir() -> Path:
    frozen = getattr(sys, "_MEIPASS", None)  # a PyInstaller bundle unpacks data here
    if frozen:
        return Path(frozen) / "resources"
    return Path(__file__).resolve().parent.parent / "resources"


def demo_csv() -> Path:
    return resources_dir() / "demo" / "bank_messages.csv"


DEMO_TASK = "Triage a retail bank customer's message: is it a fraud report, a complaint, or a question?"
DEMO_MEANINGS = {
    "fraud_report": "the customer reports a transaction, access or payment they did not authorise",
    "complaint": "the customer is unhappy with a fee, service, delay or staff, and nothing unauthorised happened",
    "question": "a neutral request for information or how to do something",
}


def build_demo_project(path: Path, loop_max_iterations: int = 2) -> int:
    """Create the demo project at `path` from the bundled CSV (atomically); returns the number of rows."""
    from .core.dataset import ColumnMapping, SplitSettings, load_dataset
    from .core.project import Project
    from .core.settings import RunSettings, save_settings

    dataset = load_dataset(demo_csv(), ColumnMapping(("message",), "label", id_column="id"), SplitSettings())

    def fill(project: Project) -> None:
        project.store_dataset(dataset, demo_csv().name)
        save_settings(project, RunSettings(task=DEMO_TASK, label_meanings=dict(DEMO_MEANINGS), teacher="local",
                                           loop_max_iterations=loop_max_iterations))
    Project.build(path, fill)
    return len(dataset.rows)
