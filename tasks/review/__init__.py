"""The review loop's formats and choices: Label Studio tasks and exports, FiftyOne datasets
on disk, and which spans people should review next (pure functions over tables)."""


class ReviewExportError(ValueError):
    """Nothing to export, or an export the format cannot hold (one line, exit 3)."""
