"""How ``octrain serve``'s transformers backend holds under concurrent clients, against ``transformers serve``.

For each server (``transformers serve`` as octrain launched it before, and octrain's server over
transformers' continuous batching) it measures, on 127.0.0.1:

* the median latency of one client asking alone, request after request;
* the median latency when ``--clients`` clients ask at once (same prompt and ``max_tokens``), and
  the ratio of the two: 1.0 would be perfect batching, ``--clients`` is one-at-a-time service;
* whether short requests are answered while a long one (``--long-tokens``) is still generating.

    python benchmarks/serve_load.py ~/.cache/octrain/smollm2-135m-instruct-<hash> --max-tokens 16
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start(server: str, model: Path, port: int) -> tuple[subprocess.Popen, str]:
    """The server process and the model name it answers to, once its health check passes."""
    if server == "transformers-serve":
        command = [str(Path(sys.executable).parent / "transformers"), "serve", model.name, "--device", "cpu"]
        cwd, name = model.parent, model.name
    else:
        command = [
            sys.executable,
            "-m",
            "octrain.use.serving_gateway",
            str(model),
            "--name",
            "bench",
            "--device",
            "cpu",
        ]
        cwd, name = Path.cwd(), "bench"
    process = subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", str(port)],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    for _ in range(600):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                if response.status == 200:
                    return process, name
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"{server} did not start")


def ask(port: int, name: str, max_tokens: int, seed: int = 0) -> float:
    body = {
        "model": name,
        "messages": [{"role": "user", "content": "Describe a ship in one sentence."}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "seed": seed,
    }
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    began = time.monotonic()
    with urllib.request.urlopen(request, timeout=3600) as response:
        response.read()
    return time.monotonic() - began


def measure(server: str, model: Path, args: argparse.Namespace) -> dict[str, object]:
    port = free_port()
    process, name = start(server, model, port)
    try:
        ask(port, name, 2)  # warm-up: the first request pays for lazy set-up
        alone = [ask(port, name, args.max_tokens) for _ in range(args.clients)]
        with ThreadPoolExecutor(args.clients) as pool:
            together = list(pool.map(lambda i: ask(port, name, args.max_tokens, i), range(args.clients)))
        # A long request, then short ones: how many shorts finish before it does.
        long_done = threading.Event()
        long_thread = threading.Thread(target=lambda: (ask(port, name, args.long_tokens), long_done.set()))
        long_thread.start()
        time.sleep(2)
        with ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(lambda i: ask(port, name, args.max_tokens, i), range(args.clients)))
        shorts_before_long = not long_done.is_set()
        long_thread.join()
    finally:
        os.killpg(process.pid, 15)
        process.wait(timeout=60)
    return {
        "server": server,
        "median_alone_s": round(statistics.median(alone), 2),
        f"median_{args.clients}_clients_s": round(statistics.median(together), 2),
        "ratio": round(statistics.median(together) / statistics.median(alone), 2),
        "shorts_answered_while_long_runs": shorts_before_long,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", type=Path, help="a model directory")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--long-tokens", type=int, default=200)
    parser.add_argument("--servers", nargs="+", default=["transformers-serve", "octrain"])
    args = parser.parse_args()
    for server in args.servers:
        print(json.dumps(measure(server, args.model.resolve(), args)), flush=True)


if __name__ == "__main__":
    main()
