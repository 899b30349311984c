"""The one exception type for problems the user can fix (bad path, wrong class, corrupt file).

Entry scripts catch it, print its message on one line and exit with status 2; anything else is a
bug and keeps its traceback.
"""
from __future__ import annotations

import sys
from functools import wraps
from typing import Callable, TypeVar

T = TypeVar("T")

EXIT_USER_ERROR = 2


class UserError(Exception):
    """An error caused by the input or the configuration, with a message that says what to fix."""


def exit_on_user_error(main: Callable[..., T]) -> Callable[..., T]:
    """Decorator for entry points: turn a UserError into a one-line message and exit code 2."""

    @wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)
        except KeyboardInterrupt:
            print("interrupted: rerun with --resume to continue from the last checkpoint", file=sys.stderr)
            sys.exit(130)

    return wrapper
