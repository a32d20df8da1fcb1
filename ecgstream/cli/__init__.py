"""The ``ecgstream`` command: one sub-command module per verb, each with ``add_parser`` and ``run``."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import threading

__all__ = ["main", "COMMANDS"]

#: sub-command name -> module under ecgstream.cli (imported lazily, without torch)
COMMANDS = {
    "train": "train",
    "evaluate": "evaluate",
    "score": "score",
    "export": "export",
    "synth": "synth",
    "replay": "replay",
    "run": "run",
}

DESCRIPTION = """\
Streaming anomaly detection for ECG and other time series.

Not a certified medical device: decision support for research and engineering only.
"""

EPILOG = "Each command's --help gives its inputs, outputs, defaults and an example."


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The ``ecgstream`` parser; with ``only`` a command name, just that sub-command is imported.

    Sub-command modules import their heavy dependencies when they run, and only the named
    command's module is imported here, which keeps ``ecgstream score ...`` start-up short.
    """
    parser = argparse.ArgumentParser(
        prog="ecgstream",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    names = [COMMANDS[only]] if only in COMMANDS else COMMANDS.values()
    for module_name in names:
        try:
            module = importlib.import_module(f"ecgstream.cli.{module_name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"ecgstream.cli.{module_name}":
                continue  # command not available in this build
            raise
        module.add_parser(sub)
    return parser


#: seconds a command has to unwind after Ctrl-C before the process exits regardless (a long
#: native call, e.g. one training step, does not see the interrupt until it returns)
INTERRUPT_GRACE_S = 3.0


class _Interrupt:
    """SIGINT handling of a command: one line at once, then ``KeyboardInterrupt``; the process
    exits within :data:`INTERRUPT_GRACE_S` seconds of the signal, or at once on a second Ctrl-C.

    Python runs signal handlers in the main thread between bytecodes, so not during a long
    native call (a training step); the signal is also watched from a thread (through the
    interpreter's wake-up fd), which starts the exit timer as the signal arrives. A command
    that installs its own SIGINT handler (the worker) is left to it.
    """

    def __init__(self, command: str):
        self.command = command
        self.timer: threading.Timer | None = None
        self._lock = threading.Lock()
        self._socks: tuple | None = None
        self._previous = None

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        import socket

        self._previous = signal.signal(signal.SIGINT, self)
        read, write = socket.socketpair()
        write.setblocking(False)
        signal.set_wakeup_fd(write.fileno(), warn_on_full_buffer=False)
        self._socks = (read, write)
        threading.Thread(target=self._watch, args=(read,), name="sigint", daemon=True).start()

    def _watch(self, sock) -> None:
        seen = 0
        while True:
            try:
                data = sock.recv(64)
            except OSError:
                return
            if not data:
                return
            n = data.count(bytes([signal.SIGINT]))
            if n and signal.getsignal(signal.SIGINT) is self:
                seen += n
                if seen >= 2:  # a second Ctrl-C
                    os._exit(130)
                self._announce()

    def _announce(self) -> None:
        """Say it once and start the exit timer."""
        with self._lock:
            if self.timer is not None:
                return
            print(f"ecgstream {self.command}: interrupted (Ctrl-C)", file=sys.stderr, flush=True)
            self.timer = threading.Timer(INTERRUPT_GRACE_S, os._exit, args=(130,))
            self.timer.daemon = True
            self.timer.start()

    def __call__(self, signum, frame) -> None:
        if self._socks is None and self.timer is not None:  # a second Ctrl-C, no watcher
            os._exit(130)
        self._announce()
        raise KeyboardInterrupt

    def cancel(self) -> None:
        """Stop the timer, and restore the SIGINT handler and the wake-up fd."""
        if self.timer is not None:
            self.timer.cancel()
        if self._socks is not None:
            signal.set_wakeup_fd(-1)
            for sock in self._socks:
                sock.close()
            self._socks = None
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


def _command_of(argv: list[str]) -> str | None:
    """The sub-command named in ``argv`` (its first word that is not an option), if any."""
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_command_of(argv))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.command:
        parser.print_help()
        return 2
    interrupt = _Interrupt(args.command)
    interrupt.install()
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if interrupt.timer is None:  # not from our handler: say it here
            print(f"ecgstream {args.command}: interrupted (Ctrl-C)", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError) as exc:
        # user-facing errors (RecordError, ModelFileError, ConfigError, ...) without a traceback
        if args.verbose:
            raise
        print(f"ecgstream {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        # an unreachable broker (BrokerUnavailable) or another Kafka client error: one line
        if args.verbose or not (
            isinstance(exc, ConnectionError) or type(exc).__module__.startswith("kafka.")
        ):
            raise
        print(f"ecgstream {args.command}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        interrupt.cancel()


if __name__ == "__main__":
    sys.exit(main())
