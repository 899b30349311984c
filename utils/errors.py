"""How bad input reaches the user: library code raises ordinary exceptions, the CLI prints one line.

The library (datasets, models, trainers, utils) raises ``ValueError`` for input that cannot be used
(wrong class, corrupt image, incompatible checkpoint, NaN loss) and ``FileNotFoundError`` for a
missing path, each with a message that says what to fix; Python users catch those as usual.
``UserError`` is what the command-line layers (entry scripts, pipelines, tools) raise themselves.
``exit_on_user_error`` turns all three, and ``OSError`` (disk full, read-only folders), into
``error: <message>`` on one line and exit status 2;
any other exception is a bug and keeps its traceback (``MOCCA_TRACEBACK=1`` keeps it for these
three too, for debugging).
"""
from __future__ import annotations

import errno
import os
import sys
from functools import wraps
from typing import Callable, TypeVar

T = TypeVar("T")

EXIT_USER_ERROR = 2


class UserError(Exception):
    """An error caused by the input or the configuration, raised at the command-line boundary."""


USER_ERRORS = (UserError, ValueError, FileNotFoundError)


def exit_on_user_error(main: Callable[..., T]) -> Callable[..., T]:
    """Decorator for entry points: a user-fixable error becomes a one-line message and exit code 2."""

    @wraps(main)
    def wrapper(*args, **kwargs):
        _terminate_as_interrupt()
        try:
            return main(*args, **kwargs)
        except USER_ERRORS as err:
            if os.environ.get("MOCCA_TRACEBACK"):
                raise
            print(f"error: {_one_line(err)}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)
        except OSError as err:  # the machine, not the code: disk full, read-only folder, permissions
            if os.environ.get("MOCCA_TRACEBACK"):
                raise
            print(f"error: {os_error_message(err)}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)
        except KeyboardInterrupt:
            print("interrupted: rerun with --resume to continue from the last checkpoint", file=sys.stderr)
            sys.exit(130)

    return wrapper


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _terminate_as_interrupt() -> None:
    """SIGTERM (``kill``, a scheduler's time limit or preemption) ends the run like Ctrl-C: cleanup code
    runs, so its run folder's claim is released and a resubmitted job can --resume it."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_interrupt)


def os_error_message(err: OSError) -> str:
    """One line for a failed file operation: what failed, on which file, and what to do."""
    where = f" ({err.filename})" if err.filename else ""
    what = err.strerror or _one_line(err)
    if err.errno == errno.ENOSPC:
        return (f"no space left on the device{where}: free space or pass another --output_path / MOCCA_CACHE; "
                "files are written atomically, so the last complete checkpoint is kept (rerun with --resume)")
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{what}{where}: pass a folder you can write to (--output_path, --run-dir or MOCCA_CACHE)"
    return f"{what}{where}"


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text or type(err).__name__
