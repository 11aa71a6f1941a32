"""``octrain ui``: the studio, a local web UI over the same library (the ``[ui]`` extra, Streamlit).

It runs ``streamlit run`` on :mod:`octrain.studio.app`, bound to 127.0.0.1 by default so that
only this machine can reach it, headless (no browser is opened for you; the address is printed),
with Streamlit's usage statistics off, as octrain keeps every library's telemetry off.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

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
    process = subprocess.Popen(command, env=env)
    try:
        return process.wait()
    except KeyboardInterrupt:
        # Streamlit got the same Ctrl-C from the terminal and shuts down; wait for it to finish.
        return process.wait()


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
