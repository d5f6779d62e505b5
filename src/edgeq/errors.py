"""User-facing errors: each says which input, what is wrong, and what to do about it."""
from __future__ import annotations


class EdgeqError(Exception):
    """An error caused by the user's input, reported without a traceback by the CLI.

    Args:
        what: what went wrong, naming the file or tensor involved.
        fix: what the user can do about it (optional).
    """

    def __init__(self, what: str, fix: str | None = None) -> None:
        self.what = what
        self.fix = fix
        super().__init__(what if not fix else f"{what}\n  fix: {fix}")


class ConfigError(EdgeqError):
    """A conversion setting is unknown or out of range (raised before any work starts).

    ``option`` is the setting's field name; front ends show it their own way (the CLI as ``--flag``).
    """

    def __init__(self, what: str, fix: str | None = None, *, option: str = "") -> None:
        super().__init__(what, fix)
        self.option = option

    def for_flag(self, flag: str) -> "ConfigError":
        """The same error naming ``flag`` (e.g. ``--calib-method``) instead of the field name."""
        what = self.what.replace(self.option, flag, 1) if self.option else self.what
        return ConfigError(what, self.fix, option=flag)


class ModelError(EdgeqError):
    """The model file cannot be read or has an unsupported structure."""


class HeadNotFoundError(ModelError):
    """No known detection/segmentation head was found in the graph."""


class CalibrationError(EdgeqError):
    """The calibration data is missing, empty or unreadable."""


class CollapseError(EdgeqError):
    """INT8 destroyed an output (the collapse guard's verdict); nothing was written."""


class ArtifactError(EdgeqError):
    """A converted artifact or its metadata is unreadable or inconsistent."""


class UnsupportedOpError(EdgeqError):
    """An operator (or an attribute combination) the chosen target cannot express."""
