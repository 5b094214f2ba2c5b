"""The working version: the one rule-set version the analyst is working on, read by every part of the app."""

from __future__ import annotations

from dataclasses import dataclass

from .project import CHOSEN_RULE_SET, EDITED_RULE_SET, SYNTHESIS_RULE_SET, Project

# The pipeline's choice at the moment the user last edited or picked a version. When phase 3 later chooses a
# different version (a new run), that newer choice is the more recent decision and becomes the working version.
PICKED_OVER_SETTING = "edited_over_chosen_id"
_UNSET = object()

SOURCES = ("edited", "chosen", "synthesis", "latest")


@dataclass(frozen=True)
class WorkingVersion:
    """`rule_set_id` and why it is the working version: "edited" (last edited or picked by the user),
    "chosen" (the closed loop's best on dev), "synthesis" (phase 2's), "latest" (no pointer: the newest)."""

    rule_set_id: int
    source: str

    def describe(self) -> str:
        why = {"edited": "last edited or picked", "chosen": "the pipeline's choice",
               "synthesis": "from synthesis", "latest": "the newest version"}[self.source]
        return f"version {self.rule_set_id} ({why})"


def working_version(project: Project) -> WorkingVersion | None:
    """The version last edited or picked by the user; else the pipeline's choice; else synthesis's; else the
    newest saved version; None when the project has no rule set yet."""
    edited = project.rule_set_pointer(EDITED_RULE_SET)
    chosen = project.rule_set_pointer(CHOSEN_RULE_SET)
    if edited is not None:
        over = project.get_setting(PICKED_OVER_SETTING, _UNSET)
        if over is _UNSET or over == chosen or chosen is None:
            return WorkingVersion(edited, "edited")
    if chosen is not None:
        return WorkingVersion(chosen, "chosen")
    synthesis = project.rule_set_pointer(SYNTHESIS_RULE_SET)
    if synthesis is not None:
        return WorkingVersion(synthesis, "synthesis")
    rows = project.rule_sets()
    return WorkingVersion(int(rows[-1].id), "latest") if rows else None


def working_rule_set(project: Project) -> int | None:
    """The working version's id (see `working_version`), or None when there is no rule set yet."""
    wv = working_version(project)
    return wv.rule_set_id if wv is not None else None


def require_working_rule_set(project: Project, explicit: int | None = None) -> int:
    """`explicit` when given (checked to exist), else the working version; a clear error when there is none."""
    if explicit is not None:
        project.rule_set(int(explicit))  # raises ProjectFileError naming the missing version
        return int(explicit)
    rs_id = working_rule_set(project)
    if rs_id is None:
        raise ValueError("The project has no rule set yet: run phases 1-2 (pld run) first.")
    return rs_id


def set_working_rule_set(project: Project, rule_set_id: int) -> None:
    """Make `rule_set_id` the working version (the user edited or picked it)."""
    project.set_rule_set_pointer(EDITED_RULE_SET, rule_set_id)
    project.set_setting(PICKED_OVER_SETTING, project.rule_set_pointer(CHOSEN_RULE_SET))


def pipeline_choice(project: Project) -> int | None:
    """The closed loop's chosen version, else synthesis's (what the pipeline alone would use)."""
    return project.rule_set_pointer(CHOSEN_RULE_SET) or project.rule_set_pointer(SYNTHESIS_RULE_SET)
