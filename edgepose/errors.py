"""Domain errors. Each carries a message a user can act on and the exit code the CLI uses.

Exit codes follow sysexits.h where one fits, so systemd units and scripts can tell them apart.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_USAGE = 64  # EX_USAGE: bad command line
EXIT_DATA = 65  # EX_DATAERR: checksum mismatch, unreadable image or model
EXIT_NO_INPUT = 66  # EX_NOINPUT: a file named on the command line or in config does not exist
EXIT_UNAVAILABLE = 69  # EX_UNAVAILABLE: camera, EdgeTPU or runtime not available
EXIT_SOFTWARE = 70  # EX_SOFTWARE: a bug in edgepose (logged with a traceback in the journal)
EXIT_IO = 74  # EX_IOERR: download or write failed
EXIT_CONFIG = 78  # EX_CONFIG: the configuration is invalid; systemd must not restart-loop on it


class EdgeposeError(Exception):
    """Base for errors that end the program with a one-line message and a distinct exit code."""

    exit_code = EXIT_SOFTWARE

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(EdgeposeError):
    """One or more configuration problems, each already formatted as `file:line: key: message`."""

    exit_code = EXIT_CONFIG

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class ImageError(EdgeposeError):
    """An image that is too large to decode safely, truncated or not an image: exit 65."""

    exit_code = EXIT_DATA


class ModelError(EdgeposeError):
    exit_code = EXIT_DATA


class ModelNotFoundError(ModelError):
    exit_code = EXIT_NO_INPUT


class FetchError(EdgeposeError):
    exit_code = EXIT_IO


class ChecksumError(FetchError):
    exit_code = EXIT_DATA


class SourceError(EdgeposeError):
    exit_code = EXIT_UNAVAILABLE


class InputFileError(EdgeposeError):
    exit_code = EXIT_NO_INPUT


class BackendError(EdgeposeError):
    exit_code = EXIT_UNAVAILABLE


class UsageError(EdgeposeError):
    """A bad command line, or one that cannot be carried out as given (e.g. one output file for many images)."""

    exit_code = EXIT_USAGE


class OutputError(EdgeposeError):
    """A result file could not be written."""

    exit_code = EXIT_IO


class BrokerError(EdgeposeError):
    """The MQTT broker cannot be reached or refused us (tools that need it now: watch, fleet-sim)."""

    exit_code = EXIT_UNAVAILABLE


class WebError(EdgeposeError):
    """The live view cannot serve (e.g. its listen address is taken)."""

    exit_code = EXIT_UNAVAILABLE
