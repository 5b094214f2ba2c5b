"""The errors the project file raises, kept apart from the storage code (core.project re-exports them)."""


class ProjectFileError(Exception):
    """The file cannot be used as a project (not a project, corrupt, too new, not writable...)."""


class ProjectTooNew(ProjectFileError):
    pass


class DiskFull(ProjectFileError):
    """A write failed because the disk is full (SQLITE_FULL, ENOSPC): the machine, not the input. Nothing that
    was committed is lost; the command reports it as a failure (exit 1), not as a bad file (exit 2)."""


class ProjectInUse(ProjectFileError):
    """Another live run holds the project (see core.run_lock); the message names its pid."""
