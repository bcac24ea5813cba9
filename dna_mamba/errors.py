"""One-line error reports for mistakes a user can fix, with full tracebacks on request."""

from __future__ import annotations

import contextlib
import os
import sys

# Errors that describe bad input or settings, raised with messages meant for the user.
USER_ERRORS: tuple[type[BaseException], ...] = (FileNotFoundError, ValueError, KeyError, PermissionError,
                                                 IsADirectoryError, NotADirectoryError)


@contextlib.contextmanager
def report_user_errors(debug: bool = False):
    """Turn user errors into ``error: <message>`` on stderr and exit status 1, unless debugging."""
    debug = debug or os.environ.get("HYDRA_FULL_ERROR") == "1"
    try:
        yield
    except USER_ERRORS as err:
        if debug:
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {message}", file=sys.stderr)
        print("(run with --debug for the full traceback)", file=sys.stderr)
        sys.exit(1)
    except MemoryError:
        if debug:
            raise
        print("error: out of memory; lower the context, trainer.micro_batch_tokens or the model size",
              file=sys.stderr)
        sys.exit(1)
