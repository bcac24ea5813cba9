"""One-line error reports for mistakes a user can fix, with full tracebacks on request."""

from __future__ import annotations

import contextlib
import os
import sys

# Errors that describe bad input or settings, raised with messages meant for the user.
USER_ERRORS: tuple[type[BaseException], ...] = (FileNotFoundError, FileExistsError, ValueError, KeyError,
                                                 PermissionError, IsADirectoryError, NotADirectoryError)

# What `python -m dna_mamba.train` can lower when a step does not fit.
TRAINING_MEMORY_ADVICE = ("trainer.segment_len=65536 (segment checkpointing), trainer.activation_checkpointing=true, "
                          "trainer.piece_tokens=65536, a smaller trainer.micro_batch_tokens, or a shorter context")

# Exit statuses of a run stopped by a signal, as shells report them (128 + the signal's number).
EXIT_CTRL_C = 130  # SIGINT
EXIT_SIGTERM = 143  # SIGTERM: a scheduler's stop or preemption


class RunStopped(Exception):
    """A training run stopped before its plan (a diverged loss, Ctrl-C, SIGTERM) after keeping what could be kept.

    The message says what last.ckpt holds and how to go on; ``exit_code`` is the process's exit status (1, or
    :data:`EXIT_CTRL_C` / :data:`EXIT_SIGTERM` for a run stopped by a signal).
    """

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


@contextlib.contextmanager
def report_user_errors(debug: bool = False, memory_advice: str | None = TRAINING_MEMORY_ADVICE):
    """Turn user errors into ``error: <message>`` on stderr and exit status 1, unless debugging.

    Running out of host or GPU memory is reported the same way, followed by ``memory_advice``: the settings of the
    command at hand that need less memory (None: the message alone). A :class:`RunStopped` is its one line and its
    exit status (a run stopped by a signal has no traceback to show, even when debugging).
    """
    debug = debug or os.environ.get("HYDRA_FULL_ERROR") == "1"
    try:
        yield
    except RunStopped as err:
        if debug and err.exit_code == 1:
            raise
        print(f"error: {err}" if err.exit_code == 1 else str(err), file=sys.stderr)  # "stopped by Ctrl-C ..."
        sys.exit(err.exit_code)
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
        _report_out_of_memory("out of memory", memory_advice)
    except RuntimeError as err:
        if debug or not _is_device_out_of_memory(err):
            raise
        first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
        _report_out_of_memory(f"GPU out of memory ({first_line})", memory_advice)


def _report_out_of_memory(what: str, advice: str | None) -> None:
    print(f"error: {what}." + (f" Lower the memory needed: {advice}" if advice else ""), file=sys.stderr)
    print("(run with --debug for the full traceback)", file=sys.stderr)
    sys.exit(1)


def _is_device_out_of_memory(err: BaseException) -> bool:
    # torch is imported only if the run got that far, which keeps this module free to import for the CLI.
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(err, torch.OutOfMemoryError)
