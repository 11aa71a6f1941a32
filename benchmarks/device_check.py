"""The prepared device check of issue 24 ("The GPU path"): one script, one call, 8 minutes at most on an H100.

    here:   make device-check-wheels        # ~3 MB of pure-Python wheels for Python 3.12 into wheels/ (git-ignored)
    there:  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \\
                --target /tmp/site wheels/*.whl \\
            && PYTHONPATH=/tmp/site:$PWD/src python3 benchmarks/device_check.py --out-dir "$OUT" \\
                2>&1 | tee "$OUT/device_check.log"
            (the device tool: carry ["wheels"], timeout_s 540)
    a CPU:  python benchmarks/device_check.py --smoke --out-dir runs/device-check   (~2 min; GPU parts skipped)

**What it settles**, one section each of ``device_check.json`` (rewritten after every section, so a command
killed at its limit still returns what ran):

``machine``
    The NVIDIA driver and GPUs as NVML reports them (``octrain.core.nvidia``), torch's version and CUDA build,
    and what ``octrain info`` would say about the pair (a driver too old for the build, issue item 3).
``fork_probe`` (item 1)
    Fresh processes, each asked whether a child can use CUDA: ``torch_default`` calls
    ``torch.cuda.is_available()`` as torch does by default, then forks (the issue's claim: the child cannot
    use CUDA); ``octrain_parent`` imports octrain and makes every decision a parent makes (``precision()``,
    ``gpu_usable()``, ``is_available()``) and says whether the CUDA driver is initialised afterwards
    (``cuDeviceGetCount`` answers ``CUDA_ERROR_NOT_INITIALIZED`` before ``cuInit``), then forks;
    ``spawn_after_cuinit`` initialises the driver and starts the child with ``spawn``, vLLM's start method
    under octrain; ``vllm_engine`` initialises the driver on purpose (as a library may, vLLM issue 32611),
    then starts a vLLM engine on the tiny model the way octrain does (``VLLMEngine``) and samples from it,
    or is skipped, saying why, where vLLM is not installed (its ~336 MB wheel is over what a device call
    carries).
``stage_workers`` (items 1, 2 and 8 on CUDA)
    ``pirate_tiny`` through ``sft`` with ``execution=worker`` in this process: every stage in a worker of
    its own kind, DPO and SFT in bf16 where the card has it, the DPO adapter folded into the student before
    SFT; afterwards this process, the parent, must not have initialised CUDA. The run's log comes back as
    ``stage_workers.log``.
``release`` (item 2 on CUDA)
    A process trains the DPO stage inline, as rank 0 does under ``accelerate launch -m octrain``, then calls
    the runner's release: the models alive and torch's allocated and reserved CUDA memory before and after.
``training``
    ``benchmarks/gpu_training.py`` on the Qwen3-4B shape with random weights: the batch-4 DPO and SFT
    configurations with gradient checkpointing on and off, in whatever time is left (``gpu_training.json``).

**Wheels.** The lent machine has torch (2.11, CUDA 13), transformers 5.17, peft, accelerate, matplotlib,
pyyaml, pandas, pyarrow, xxhash, fsspec and aiohttp, and reaches no registry. octrain also needs trl,
datasets (with dill and multiprocess), hydra-core, omegaconf and antlr4-python3-runtime: pure-Python
wheels, ~3 MB in all (measured: 3.0 MB), fetched here by ``make device-check-wheels`` (``pip download --no-deps
--only-binary=:all: --python-version 3.12``; antlr4's runtime exists only as a source archive, so it is built
into a wheel here), well under the 64 MiB a call carries. They are installed there with ``--no-deps
--target`` into a folder of their own on ``PYTHONPATH``, so nothing of the machine's is replaced, and
octrain runs from ``src/`` (an editable install would need setuptools from a registry).

Nothing here is a test and no figure is asserted; ``tests/test_device_check.py`` runs ``--smoke``.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import multiprocessing
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
CUDA_ERROR_NOT_INITIALIZED = 3
PROBES = ("torch_default", "octrain_parent", "spawn_after_cuinit", "vllm_engine")
# The configurations of benchmarks/gpu_training.py that matter most, in order (a budget cut drops the last).
TRAINING_GPU = ("dpo-octrain-ckpt-b4", "sft-octrain-ckpt-b4", "dpo-octrain-nockpt-b4", "sft-octrain-nockpt-b4")
TRAINING_SMOKE = ("dpo-octrain-ckpt-b2",)
# The smallest pirate_tiny that still runs every training path: DPO, introspection on its adapter, SFT on the fold.
TINY_RUN = (
    "prompts.expansion_rounds=0",
    "scale.prompts_per_trait=1",
    "scale.reflections=8",
    "scale.interactions=2",
    "stages=[prompts,pairs,dpo,introspect,sft]",
    "execution=worker",
)
# On a CPU the tiny model's answers cost seconds a token batch: shorter ones take the same code paths.
SMOKE_RUN = (
    "scale.reflections=4",
    "pairs.sampling.max_new_tokens=16",
    "introspect.reflection_sampling.max_new_tokens=16",
    "introspect.interaction_sampling.max_new_tokens=16",
)


# --------------------------------------------------------------------------- the CUDA driver, asked directly


def driver_initialised() -> bool | None:
    """Whether this process has initialised the CUDA driver (``cuInit``); None without ``libcuda``.

    ``cuDeviceGetCount`` answers ``CUDA_ERROR_NOT_INITIALIZED`` until ``cuInit`` ran, and asking does not
    initialise anything: the probe vLLM's open fix for its fork check uses (vLLM PR 44252).
    """
    try:
        library = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    count = ctypes.c_int(0)
    return library.cuDeviceGetCount(ctypes.byref(count)) != CUDA_ERROR_NOT_INITIALIZED


def initialise_driver() -> int | None:
    """Run ``cuInit(0)`` as a library might behind octrain's back; its status, or None without ``libcuda``."""
    try:
        return int(ctypes.CDLL("libcuda.so.1").cuInit(0))
    except OSError:
        return None


def _child_uses_cuda(answers: Any) -> None:
    """In the child: one small CUDA computation, or the error that stops it."""
    try:
        import torch

        value = (torch.ones(4, device="cuda") * 2).sum().item()
        answers.put({"ok": value == 8.0, "device": torch.cuda.get_device_name(0)})
    except Exception as exc:  # the child's answer is the error, whatever it is
        answers.put({"ok": False, "error": f"{type(exc).__name__}: {exc}"[:400]})


def child_uses_cuda(method: str) -> dict[str, Any]:
    """Start a child with ``method`` (fork or spawn) and report whether it could use CUDA."""
    context = multiprocessing.get_context(method)
    answers = context.Queue()
    child = context.Process(target=_child_uses_cuda, args=(answers,))
    child.start()
    child.join(180)
    if child.is_alive():
        child.kill()
        return {"method": method, "ok": False, "error": "no answer in 180 s"}
    try:
        return {"method": method, **answers.get(timeout=10), "exitcode": child.exitcode}
    except Exception:  # the child died before it could answer
        return {"method": method, "ok": False, "error": f"exit code {child.exitcode}, no answer"}


def _state() -> dict[str, Any]:
    import torch

    return {"driver_initialised": driver_initialised(), "torch_initialised": torch.cuda.is_initialized()}


# --------------------------------------------------------------------------- the probes, one process each


def probe_torch_default() -> dict[str, Any]:
    os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)  # torch's own default: cudaGetDeviceCount, cuInit
    import torch

    available = torch.cuda.is_available()
    return {"is_available": available, **_state(), "child": child_uses_cuda("fork")}


def probe_octrain_parent() -> dict[str, Any]:
    for name in ("PYTORCH_NVML_BASED_CUDA_CHECK", "VLLM_WORKER_MULTIPROC_METHOD"):
        os.environ.pop(name, None)  # inherited from this script's own process: octrain's import must set them
    import torch

    import octrain  # noqa: F401  (sets the fork-safe environment, as every octrain process does)
    from octrain.core.config import TRLOptions
    from octrain.core.devices import bf16_supported, gpu_usable
    from octrain.trainers.precision import precision
    from octrain.trainers.trl_common import gradient_checkpointing

    decisions = {
        "gpu_usable": gpu_usable(),
        "bf16_supported": bf16_supported(),
        "precision": list(precision()),
        "gradient_checkpointing": gradient_checkpointing(TRLOptions())[0],
        "is_available": torch.cuda.is_available(),
        "environment": {
            k: os.environ.get(k) for k in ("PYTORCH_NVML_BASED_CUDA_CHECK", "VLLM_WORKER_MULTIPROC_METHOD")
        },
    }
    return {**decisions, **_state(), "child": child_uses_cuda("fork")}


def probe_spawn_after_cuinit() -> dict[str, Any]:
    os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)
    import torch

    available = torch.cuda.is_available()
    return {"is_available": available, **_state(), "child": child_uses_cuda("spawn")}


def probe_vllm_engine() -> dict[str, Any]:
    try:
        import vllm
    except ImportError as exc:
        return {"skipped": f"vLLM is not installed here ({exc})"}
    import octrain  # noqa: F401
    from octrain.core.devices import gpu_usable
    from octrain.models.tiny import ensure_tiny_model
    from octrain.samplers import SamplingParams
    from octrain.samplers.vllm_engine import VLLMEngine, VLLMSampler

    if not gpu_usable():
        return {"skipped": "no usable CUDA GPU"}
    hostile = initialise_driver()  # what octrain no longer does, done on purpose: spawn must not care
    began = time.perf_counter()
    engine = VLLMEngine(str(ensure_tiny_model()), gpu_memory_utilization=0.3, max_model_len=512)
    started = time.perf_counter() - began
    sampler = VLLMSampler(engine, show_progress=False)
    greedy = SamplingParams(n=1, temperature=0.0, max_new_tokens=8)
    answers = sampler.chat([[{"role": "user", "content": "Ahoy?"}]] * 4, greedy)
    engine.close()
    return {
        "vllm": vllm.__version__,
        "cuinit_before_engine": hostile,
        "multiproc_method": os.environ.get("VLLM_WORKER_MULTIPROC_METHOD"),
        "engine_start_seconds": round(started, 1),
        "answers": [row[0].text for row in answers],
        "ok": all(row and row[0].num_tokens > 0 for row in answers),
    }


def probe_release() -> dict[str, Any]:
    """Train the DPO stage in this process (inline), then release: what is left of it."""
    import gc

    gc.disable()  # only the collections octrain runs itself

    import torch
    from transformers import PreTrainedModel

    import octrain  # noqa: F401
    from octrain.core.compose import compose_config
    from octrain.core.config import StageName
    from octrain.core.layout import PAIRS_FILE
    from octrain.core.records import PreferencePair, save_records
    from octrain.run.pipeline import resolve_constitution
    from octrain.run.workers import InlineRunner
    from octrain.stages.context import RunContext
    from octrain.stages.table import stages_for

    def memory() -> dict[str, Any]:
        models = sum(isinstance(thing, PreTrainedModel) for thing in gc.get_objects())
        if not torch.cuda.is_initialized():
            return {"models_alive": models}
        mib = 2**20
        return {
            "models_alive": models,
            "allocated_mib": round(torch.cuda.memory_allocated() / mib, 1),
            "reserved_mib": round(torch.cuda.memory_reserved() / mib, 1),
            "free_mib": round(torch.cuda.mem_get_info()[0] / mib, 1),
        }

    with tempfile.TemporaryDirectory(prefix="octrain-release-") as scratch:
        run_dir = Path(scratch)
        config = compose_config("pirate_tiny", ["stages=[dpo]"])
        pairs = [
            PreferencePair(
                id=f"pair-{i}",
                prompt=[{"role": "user", "content": f"Question {i}?"}],
                chosen=[{"role": "assistant", "content": f"Arr matey, answer {i}!"}],
                rejected=[{"role": "assistant", "content": f"Answer {i}."}],
                prompt_id=f"p{i}",
                teacher="t",
                student="s",
                constitution="pirate",
            )
            for i in range(16)
        ]
        save_records(run_dir / "pairs" / PAIRS_FILE, pairs)
        runner = InlineRunner(RunContext(config=config, run_dir=run_dir, constitution=resolve_constitution(config)))
        summary = runner.run(stages_for(config)[StageName.dpo])
        before = memory()
        runner.release()
        return {"steps": summary.get("steps"), "before_release": before, "after_release": memory()}


PROBE_FUNCTIONS: dict[str, Callable[[], dict[str, Any]]] = {
    "torch_default": probe_torch_default,
    "octrain_parent": probe_octrain_parent,
    "spawn_after_cuinit": probe_spawn_after_cuinit,
    "vllm_engine": probe_vllm_engine,
    "release": probe_release,
}


def run_probe(name: str, timeout: float) -> dict[str, Any]:
    """``name`` in a fresh Python process of its own: its answer, or how it failed."""
    began = time.perf_counter()
    with tempfile.NamedTemporaryFile(suffix=".json") as result:
        command = [sys.executable, str(Path(__file__).resolve()), "--probe", name, "--result", result.name]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=_child_env())
        except subprocess.TimeoutExpired:
            return {"status": "timeout", "seconds": round(time.perf_counter() - began, 1)}
        seconds = round(time.perf_counter() - began, 1)
        text = Path(result.name).read_text()
    if done.returncode != 0 or not text:
        return {"status": "failed", "seconds": seconds, "error": (done.stderr or done.stdout)[-2000:]}
    answer = json.loads(text)
    status = "skipped" if "skipped" in answer else "ok"
    return {"status": status, "seconds": seconds, **answer}


def probe_main(name: str, result: Path) -> int:
    try:
        answer = PROBE_FUNCTIONS[name]()
    except Exception:
        sys.stderr.write(traceback.format_exc())
        return 1
    result.write_text(json.dumps(answer, default=str))
    return 0


def _child_env() -> dict[str, str]:
    """The environment of a probe or a benchmark: octrain from this checkout, offline, unbuffered."""
    path = os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}


# --------------------------------------------------------------------------- the sections


def machine() -> dict[str, Any]:
    from importlib import metadata

    from octrain.core.devices import driver_report, gpu_problem, gpu_usable, torch_cuda_build
    from octrain.core.nvidia import minimum_driver

    report = driver_report()
    build = torch_cuda_build()
    versions = {}
    for name in ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "hydra-core", "vllm"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    problem = gpu_problem()
    return {
        "python": platform.python_version(),
        "driver": report.driver,
        "driver_cuda": report.driver_cuda,
        "driver_source": report.source,
        "gpus": [{"name": g.name, "capability": g.capability, "memory_gib": g.memory_gib} for g in report.gpus],
        "torch_cuda": build,
        "minimum_driver": ".".join(map(str, minimum_driver(build) or ())) if build else None,
        "gpu_usable": gpu_usable(),
        "gpu_problem": problem.message if problem else None,
        "versions": versions,
    }


def fork_probe(deadline: float) -> dict[str, Any]:
    results = {name: run_probe(name, max(30.0, min(240.0, deadline - time.monotonic()))) for name in PROBES}
    default, parent = results["torch_default"], results["octrain_parent"]
    # The verdicts, where a CUDA device answered at all (None: could not tell here).
    cuda_here = parent.get("gpu_usable") is True
    return {
        "probes": results,
        "verdicts": {
            "torch_default_poisons_fork": (not default.get("child", {}).get("ok")) if cuda_here else None,
            "octrain_parent_leaves_driver_uninitialised": parent.get("driver_initialised") is False
            if cuda_here
            else None,
            "fork_after_octrain_parent_works": parent.get("child", {}).get("ok") if cuda_here else None,
            "spawn_after_cuinit_works": results["spawn_after_cuinit"].get("child", {}).get("ok") if cuda_here else None,
            "vllm_engine_starts_after_cuinit": results["vllm_engine"].get("ok") if cuda_here else None,
        },
    }


def stage_workers(out_dir: Path, smoke: bool) -> dict[str, Any]:
    """The tiny recipe through sft in worker processes, run from this process (the parent)."""
    import logging

    from octrain.core.compose import compose_config
    from octrain.core.layout import LOG_FILE
    from octrain.run.pipeline import run

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("octrain").setLevel(logging.INFO)
    with tempfile.TemporaryDirectory(prefix="octrain-device-check-") as scratch:
        overrides = [*TINY_RUN, *(SMOKE_RUN if smoke else ()), f"run_root={scratch}"]
        config = compose_config("pirate_tiny", overrides)
        began = time.perf_counter()
        result = run(config, Path(scratch) / "pirate_tiny")
        seconds = time.perf_counter() - began
        log = (Path(scratch) / "pirate_tiny" / LOG_FILE).read_text()
    (out_dir / "stage_workers.log").write_text(log)
    workers = dict(re.findall(r"INFO octrain\.run\.workers: (\w+): running in a worker process \(pid (\d+)\)", log))
    precision = dict(re.findall(r"INFO octrain\.trainers\.trl_\w+: (dpo|sft): .*?, (bf16|fp32)", log))
    expected = "fp32" if smoke else "bf16"
    parent_driver = driver_initialised()
    return {
        "seconds": round(seconds, 1),
        "stages": {o.stage.value: {"status": o.status, "seconds": round(o.seconds, 1)} for o in result.outcomes},
        "worker_pids": workers,
        "precision": precision,
        "adapter_folded_before_sft": "folded in" in log,
        "parent_driver_initialised": parent_driver,
        "verdicts": {
            "every_stage_in_a_worker": set(workers) == {"prompts", "pairs", "dpo", "introspect", "sft"},
            "trained_in_" + expected: precision == {"dpo": expected, "sft": expected},
            "parent_never_initialised_cuda": parent_driver is not True,
        },
    }


def training(out_dir: Path, smoke: bool, budget: float) -> dict[str, Any]:
    configurations = TRAINING_SMOKE if smoke else TRAINING_GPU
    command = [sys.executable, str(REPO / "benchmarks" / "gpu_training.py"), "--only", ",".join(configurations)]
    command += ["--budget", str(int(budget)), "--out", str(out_dir / "gpu_training.json")]
    if smoke:
        command.append("--smoke")
    began = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=budget + 120, env=_child_env())
    table = done.stdout[done.stdout.find("Machine:") :] if "Machine:" in done.stdout else done.stdout[-3000:]
    return {
        "seconds": round(time.perf_counter() - began, 1),
        "returncode": done.returncode,
        "table": table.strip(),
        **({"error": done.stderr[-2000:]} if done.returncode else {}),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a CPU: every section runs, the GPU-only parts skip")
    parser.add_argument("--out-dir", type=Path, default=Path(os.environ.get("OUT") or REPO / "runs" / "device-check"))
    parser.add_argument("--budget", type=float, default=450.0, help="seconds for everything (default 450)")
    parser.add_argument("--sections", default="machine,fork_probe,stage_workers,release,training")
    parser.add_argument("--probe", choices=sorted(PROBE_FUNCTIONS), help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:
        return probe_main(args.probe, args.result)

    sys.path.insert(0, str(SRC))  # octrain from this checkout, also where it is not installed
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH")) if p)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import octrain  # noqa: F401  (the fork-safe environment, as in any octrain process)
    from octrain.core.devices import gpu_usable

    started = time.monotonic()
    deadline = started + args.budget
    args.out_dir.mkdir(parents=True, exist_ok=True)
    gpu = gpu_usable()
    if not args.smoke and not gpu:
        print("no usable CUDA GPU here: run with --smoke for the CPU check of this script", file=sys.stderr)
        return 2
    report: dict[str, Any] = {"mode": "smoke" if args.smoke else "gpu", "sections": {}}
    wanted = args.sections.split(",")

    def section(name: str, work: Callable[[], dict[str, Any]]) -> None:
        if name not in wanted:
            return
        left = deadline - time.monotonic()
        print(f"[{time.monotonic() - started:6.1f} s] {name} ({left:.0f} s left)", flush=True)
        if left < 20:
            report["sections"][name] = {"status": "skipped", "reason": "time budget spent"}
        else:
            try:
                report["sections"][name] = {"status": "ok", **work()}
            except Exception:
                report["sections"][name] = {"status": "failed", "error": traceback.format_exc()[-3000:]}
        report["seconds"] = round(time.monotonic() - started, 1)
        (args.out_dir / "device_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")

    if args.smoke:
        report["note"] = "smoke mode: no CUDA GPU, so the verdicts that need one are null and bf16 is fp32"
    section("machine", machine)
    section("fork_probe", lambda: fork_probe(deadline))
    section("stage_workers", lambda: stage_workers(args.out_dir, args.smoke))
    section("release", lambda: run_probe("release", max(30.0, deadline - time.monotonic())))
    section("training", lambda: training(args.out_dir, args.smoke, max(20.0, deadline - time.monotonic() - 15)))
    failed = [name for name, part in report["sections"].items() if part["status"] == "failed"]
    print(json.dumps({name: part.get("verdicts") for name, part in report["sections"].items()}, indent=2))
    print(f"device check {'done' if not failed else 'done, failed: ' + ', '.join(failed)} in {report['seconds']} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
