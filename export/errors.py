"""The one exception the export stage raises for anything the user can fix."""

from __future__ import annotations


class ExportError(Exception):
    """A checkpoint, option or artifact problem; the CLI prints it as one line and exits with code 2."""
