"""``octrain ui``: the studio, a local web UI over the same library (the ``[ui]`` extra, Streamlit).

It runs ``streamlit run`` on :mod:`octrain.studio.app`, bound to 127.0.0.1 by default so that
only this machine can reach it, headless (no browser is opened for you; the address is printed),
with Streamlit's usage statistics off, as octrain keeps every library's telemetry off.

Streamlit runs in a session of its own, as ``octrain serve`` runs its server
(:func:`octrain.use.serving.run_server`): Ctrl-C in the terminal, SIGTERM (a service manager, a
job scheduler, ``kill``) or SIGHUP (the terminal closed) reach octrain, which stops Streamlit's
whole process group before it exits. Without that, a SIGTERM ended octrain alone, and Streamlit,
handed to init, kept answering on its port. The runs launched from the studio have sessions of
their own and go on (the Runs page stops them).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType

EXAMPLES = """examples:
  octrain ui                          # http://127.0.0.1:8501, runs under ./runs
  octrain ui --port 8600 --run-root /data/runs
  octrain ui --print-command          # the streamlit command, started by hand
"""


def streamlit_command(host: str, port: int) -> list[str]:
    """The ``streamlit run`` command line for the studio app."""
    from octrain.studio import APP_PATH

    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(APP_PATH),
        "--server.address",
        host,
        "--server.port",
        str(port),
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        # The app is installed code, not a script being written: no watcher threads polling it.
        "--server.fileWatcherType",
        "none",
        # No "Deploy" button for Streamlit's cloud in the toolbar: the studio has a Deploy page of its own.
        "--client.toolbarMode",
        "minimal",
    ]


def _run(args: argparse.Namespace) -> int:
    from octrain.core.errors import ConfigError
    from octrain.studio.state import RUN_ROOT_ENV

    if importlib.util.find_spec("streamlit") is None:
        raise ConfigError("octrain ui needs Streamlit: pip install -e '.[ui]'")
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port: expected 1-65535, got {args.port}")
    command = streamlit_command(args.host, args.port)
    run_root = Path(args.run_root).expanduser().resolve()
    if args.print_command:
        print(f"{RUN_ROOT_ENV}={run_root} {' '.join(command)}")
        return 0
    print(f"octrain studio on http://{args.host}:{args.port} (runs under {run_root}); Ctrl-C stops it", flush=True)
    env = {**os.environ, RUN_ROOT_ENV: str(run_root)}
    return run_streamlit(command, env)


# The signals that end ``octrain ui`` and, through it, Streamlit.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def run_streamlit(command: list[str], env: dict[str, str]) -> int:
    """Run Streamlit until it exits, or until Ctrl-C, SIGTERM or SIGHUP stops it; its exit status
    when it ended on its own, 0 after a stop."""
    from octrain.use.serving import stop

    stopping = False

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        # The first signal stops the wait; a second one (Ctrl-C pressed again) must not cut short
        # the stop it started, which ends in SIGKILL if Streamlit does not go quietly.
        if not stopping:
            stopping = True
            raise KeyboardInterrupt

    # Installed before Streamlit starts, so that no signal can end octrain and leave Streamlit behind.
    previous = {signum: signal.signal(signum, on_signal) for signum in STOP_SIGNALS}
    process: subprocess.Popen[bytes] | None = None
    try:
        # Its own session: the terminal's Ctrl-C reaches octrain only, and octrain stops the group.
        process = subprocess.Popen(command, env=env, start_new_session=True)
        return process.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        stopping = True
        if process is not None:
            # SIGTERM to Streamlit's process group, and SIGKILL if it has not ended after a grace period.
            stop(process)
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "ui",
        help="the studio: a local web UI for constitutions, training, evaluation, chat and deployment",
        description="Start octrain studio (Streamlit) on this machine until Ctrl-C. Runs launched from it "
        "keep going when the browser or the studio closes.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=8501, help="port (default: 8501)")
    parser.add_argument("--run-root", default="runs", help="where runs go and the registry is (default: runs)")
    parser.add_argument("--print-command", action="store_true", help="print the command that starts it; start nothing")
    parser.set_defaults(func=_run)
