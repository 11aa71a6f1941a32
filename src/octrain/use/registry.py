"""The checkpoint registry: every trained model of every run under a run root, in one table.

A training stage (``dpo``, ``sft``) that finishes is registered under a readable, unique name:
the run's path relative to the run root plus the stage, ``pirate_mini/sft`` or
``pirate_mini-sweep/dpo.beta=0.1/dpo``. Each entry says which persona and base model it was
trained for, where its adapter is, the stage's fingerprint and headline metrics, and when the
stage finished, so that "the latest sft checkpoint of persona X" has one answer.

The table lives in ``<run_root>/registry.sqlite``. The jobs of a parallel sweep finish at the
same moment, so each write is one ``BEGIN IMMEDIATE`` transaction on a database in WAL mode with
a busy timeout: a second writer waits for the first instead of failing or overwriting it.
(SQLite's locking needs a local file system; on NFS, keep the run root on local disk or rebuild.)

The registry is an index, never the record: the run directories are. ``rebuild`` recreates the
table from them (the same two depths the pipeline searches for runs, ``<root>/*`` and
``<root>/*/*``), so a deleted or damaged registry file loses nothing.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import logging
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from octrain.core.errors import OctrainError, RegistryError
from octrain.core.layout import REGISTRY_FILE
from octrain.core.records import ModelRef

logger = logging.getLogger(__name__)

TRAINED_STAGES = ("dpo", "sft")  # the stages whose output is a model

# The run directories under a run root: runs (``<root>/<run>``) and sweep jobs
# (``<root>/<name>-sweep/<overrides>``), as the pipeline's reuse search has them. Smoke runs live
# one level deeper (``RUN/smoke/small``) and are scratch, not checkpoints anyone should pick.
_RUN_PATTERNS = ("*", "*/*")

# Long enough for every job of a large sweep to queue behind one another: a write takes
# milliseconds, so a writer that still waits after this is stuck behind a dead lock holder.
_BUSY_TIMEOUT_S = 60.0
_SCHEMA_VERSION = 1

# The summary fields that are not headline numbers: file lists and model labels.
_NOT_METRICS = frozenset({"files", "model"})


@dataclass(frozen=True)
class Checkpoint:
    """One registered model: a finished training stage of one run."""

    name: str  # "<run path relative to run_root>/<stage>"
    persona: str  # the constitution's name
    stage: str  # "dpo" | "sft"
    base_model: str  # the student's path or Hub id
    adapter: str  # absolute adapter directory, or a remote (tinker://) path
    run_dir: str  # absolute
    fingerprint: str  # the stage's done.json fingerprint
    metrics: dict[str, Any] = field(default_factory=dict)  # steps, final_loss, reward_accuracy, ...
    created: float = 0.0  # unix time of the stage's done.json
    remote: bool = False

    @property
    def stage_dir(self) -> Path:
        return Path(self.run_dir) / self.stage

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


_COLUMNS = (
    "name",
    "persona",
    "stage",
    "base_model",
    "adapter",
    "run_dir",
    "fingerprint",
    "metrics",
    "created",
    "remote",
)
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM checkpoints"
_INSERT = f"INTO checkpoints ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' for _ in _COLUMNS)})"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS checkpoints (
    name TEXT PRIMARY KEY,
    persona TEXT NOT NULL,
    stage TEXT NOT NULL,
    base_model TEXT NOT NULL,
    adapter TEXT NOT NULL,
    run_dir TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    metrics TEXT NOT NULL,
    created REAL NOT NULL,
    remote INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS checkpoints_persona ON checkpoints (persona, stage, created);
"""


def _row(entry: Checkpoint) -> tuple[Any, ...]:
    values = entry.to_json()
    values["metrics"] = json.dumps(entry.metrics)
    values["remote"] = int(entry.remote)
    return tuple(values[column] for column in _COLUMNS)


def _entry(row: tuple[Any, ...]) -> Checkpoint:
    values = dict(zip(_COLUMNS, row, strict=True))
    values["metrics"] = json.loads(values["metrics"])
    values["remote"] = bool(values["remote"])
    return Checkpoint(**values)


class Registry:
    """The registry file at ``path``. Every call opens its own connection, so one object may be
    shared by threads or inherited across ``fork`` without sharing an SQLite handle."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        # Switching to WAL takes an exclusive lock, which the busy timeout does not always cover
        # when several processes open a new file at once: retry briefly. Once the file is in WAL
        # mode (a setting stored in the file) the pragma changes nothing and takes no such lock.
        deadline = time.monotonic() + _BUSY_TIMEOUT_S
        while True:
            try:
                with self._connect() as conn:
                    conn.execute("PRAGMA journal_mode=WAL")
                    with self._transaction(conn):
                        for statement in filter(str.strip, _SCHEMA.split(";")):
                            conn.execute(statement)
                        conn.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
                return
            except RegistryError as exc:
                locked = isinstance(exc.__cause__, sqlite3.OperationalError) and "locked" in str(exc.__cause__)
                if not locked or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    @classmethod
    def at(cls, run_root: str | Path) -> Registry:
        """The registry of the runs under ``run_root`` (created, with the directory, if missing)."""
        root = Path(run_root)
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RegistryError(f"{root}: cannot create the run root for the checkpoint registry ({exc})") from exc
        return cls(root / REGISTRY_FILE)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            # isolation_level=None: no implicit transactions; each method says where its own begins.
            conn = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_S, isolation_level=None)
        except sqlite3.Error as exc:
            raise RegistryError(f"{self.path}: cannot open the checkpoint registry ({exc})") from exc
        try:
            yield conn
        except sqlite3.Error as exc:
            raise RegistryError(f"{self.path}: the checkpoint registry cannot be used ({exc})") from exc
        finally:
            conn.close()

    @contextlib.contextmanager
    def _transaction(self, conn: sqlite3.Connection, *, write: bool = True) -> Iterator[None]:
        # IMMEDIATE takes the write lock at the start, so two writers queue on the busy timeout
        # instead of both reading and then one failing when it tries to upgrade its lock.
        conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield
        except BaseException:
            if conn.in_transaction:  # an error may have ended the transaction already
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def register(self, entry: Checkpoint) -> None:
        """Add ``entry``, replacing any entry of the same name (a stage that ran again)."""
        placeholders = ", ".join("?" for _ in _COLUMNS)
        with self._connect() as conn, self._transaction(conn):
            conn.execute(
                f"INSERT OR REPLACE INTO checkpoints ({', '.join(_COLUMNS)}) VALUES ({placeholders})", _row(entry)
            )

    def entries(
        self, *, persona: str | None = None, stage: str | None = None, base: str | None = None
    ) -> list[Checkpoint]:
        """The entries matching every filter given, newest first (then by name, for a stable order)."""
        clauses, values = [], []
        for column, value in (("persona", persona), ("stage", stage), ("base_model", base)):
            if value is not None:
                clauses.append(f"{column} = ?")
                values.append(value)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        query = f"{_SELECT}{where} ORDER BY created DESC, name"
        with self._connect() as conn:
            return [_entry(row) for row in conn.execute(query, values)]

    def _names(self) -> list[str]:
        with self._connect() as conn:
            return [row[0] for row in conn.execute("SELECT name FROM checkpoints ORDER BY name")]

    def get(self, name: str) -> Checkpoint:
        """The entry called ``name``; RegistryError naming the closest names when there is none."""
        with self._connect() as conn:
            row = conn.execute(f"{_SELECT} WHERE name = ?", (name,)).fetchone()
        if row is not None:
            return _entry(row)
        names = self._names()
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        if close:
            hint = f"did you mean {', '.join(close)}?"
        elif names:
            hint = f"{len(names)} registered; `octrain checkpoints list` shows them"
        else:
            hint = f"the registry is empty; `octrain checkpoints rebuild --run-root {self.path.parent}` fills it"
        raise RegistryError(f"no checkpoint named {name!r} in {self.path}: {hint}")

    def latest(self, persona: str, stage: str = "sft") -> Checkpoint:
        """The most recently finished ``stage`` checkpoint of ``persona``."""
        found = self.entries(persona=persona, stage=stage)
        if found:
            return found[0]
        personas = sorted({entry.persona for entry in self.entries(stage=stage)})
        known = ", ".join(personas) if personas else "none"
        raise RegistryError(f"no {stage} checkpoint of persona {persona!r} in {self.path} (personas with one: {known})")

    def delete(self, name: str) -> Checkpoint:
        """Remove the entry called ``name`` (never its files) and return it."""
        entry = self.get(name)
        with self._connect() as conn, self._transaction(conn):
            conn.execute("DELETE FROM checkpoints WHERE name = ?", (name,))
        return entry

    def rebuild(self, run_root: str | Path) -> int:
        """Replace the table with the finished training stages found under ``run_root``; their count.

        The scan happens before the transaction and the swap is one transaction, so a reader
        sees the old table or the new one, never an empty one in between.
        """
        found = scan(run_root)
        with self._connect() as conn, self._transaction(conn):
            conn.execute("DELETE FROM checkpoints")
            conn.executemany(f"INSERT {_INSERT}", [_row(entry) for entry in found])
        return len(found)


def _read_done(path: Path) -> dict[str, Any] | None:
    """A finished stage's marker, or None when it is missing or unusable (the pipeline then reruns
    the stage, so the registry must not count it either)."""
    try:
        value = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(value, dict) or not isinstance(value.get("fingerprint"), str):
        return None
    return value if isinstance(value.get("summary"), dict) else None


def _headline(done: dict[str, Any]) -> dict[str, Any]:
    """The stage summary's scalar fields (steps, losses, reward accuracy, mode) and its duration."""
    metrics = {
        key: value
        for key, value in done["summary"].items()
        if key not in _NOT_METRICS and (value is None or isinstance(value, (int, float, str, bool)))
    }
    if isinstance(done.get("seconds"), (int, float)):
        metrics["seconds"] = done["seconds"]
    return metrics


def _persona(run_dir: Path, config: Any) -> str:
    """The constitution's own name, from the copy the run keeps; else as the config names it."""
    from octrain.constitution import load_constitution

    for copy in sorted(run_dir.glob("constitution.*")):
        with contextlib.suppress(OctrainError):  # a damaged copy: the config still names the persona
            return load_constitution(copy).name
    named = str(OmegaConf.select(config, "constitution", default="") or "")
    if not named:
        raise RegistryError(f"{run_dir}: neither a constitution file nor config.yaml's constitution names the persona")
    # A path in the config (constitution=path/to/mine.yaml) names the persona by its file.
    return Path(named).stem if Path(named).suffix else named


def checkpoint_of_stage(run_dir: Path, stage: str, run_root: Path) -> Checkpoint | None:
    """The registry entry for ``run_dir``'s finished ``stage``, or None when it is not finished.

    Raises:
        RegistryError: the stage is not a training stage, ``run_dir`` is not under ``run_root``,
            or the run's config.yaml or the stage's model.json cannot be read.
    """
    from octrain.core.layout import CONFIG_FILE, DONE_FILE, MODEL_FILE

    if stage not in TRAINED_STAGES:
        raise RegistryError(f"stage {stage!r}: only training stages are registered ({', '.join(TRAINED_STAGES)})")
    run_path, root = Path(run_dir).resolve(), Path(run_root).resolve()
    try:
        relative = run_path.relative_to(root)
    except ValueError:
        raise RegistryError(f"run directory {run_path} is not under the run root {root}") from None
    if relative == Path():
        raise RegistryError(f"run directory {run_path} is the run root itself: runs live in directories under it")
    stage_dir = run_path / stage
    done = _read_done(stage_dir / DONE_FILE)
    if done is None:
        return None
    created = (stage_dir / DONE_FILE).stat().st_mtime
    try:
        config = OmegaConf.load(run_path / CONFIG_FILE)
    except (OSError, ValueError) as exc:  # OmegaConf's YAML errors are ValueErrors
        raise RegistryError(f"{run_path / CONFIG_FILE}: cannot read the run's config ({exc})") from exc
    try:
        model = ModelRef.load(stage_dir / MODEL_FILE)
    except OctrainError as exc:
        raise RegistryError(f"{stage_dir / MODEL_FILE}: the finished stage's model cannot be read ({exc})") from exc
    if model.remote:
        adapter, remote = model.remote, True
    else:
        adapter, remote = str(Path(model.adapter).resolve()) if model.adapter else "", False
    return Checkpoint(
        name=f"{relative.as_posix()}/{stage}",
        persona=_persona(run_path, config),
        stage=stage,
        base_model=model.base,
        adapter=adapter,
        run_dir=str(run_path),
        fingerprint=done["fingerprint"],
        metrics=_headline(done),
        created=created,
        remote=remote,
    )


def scan(run_root: str | Path) -> list[Checkpoint]:
    """Every finished training stage under ``run_root``, at the pipeline's two run depths.

    A run whose files cannot be read is left out with a warning: one damaged run must not keep
    the others out of a rebuilt registry.
    """
    root = Path(run_root).resolve()
    run_dirs = sorted({path for pattern in _RUN_PATTERNS for path in root.glob(pattern) if path.is_dir()})
    found: list[Checkpoint] = []
    for run_dir in run_dirs:
        for stage in TRAINED_STAGES:
            try:
                entry = checkpoint_of_stage(run_dir, stage, root)
            except RegistryError as exc:
                logger.warning("registry: leaving out %s/%s: %s", run_dir, stage, exc)
                continue
            if entry is not None:
                found.append(entry)
    return found


def register_stage(run_dir: Path, stage: str, run_root: Path) -> Checkpoint | None:
    """Register ``run_dir``'s finished ``stage``; the entry, or None when it was not registered.

    Called after a training stage has finished: the model is on disk whatever happens here, so a
    registry that cannot be written (a read-only run root, a damaged file) is a warning, never a
    failed stage. ``octrain checkpoints rebuild`` catches up later.
    """
    if not Path(run_dir).resolve().is_relative_to(Path(run_root).resolve()):
        # A run placed elsewhere (hydra.run.dir, a test's directory) belongs to no run root's index.
        logger.info("registry: %s is not under run_root %s: not registered", run_dir, run_root)
        return None
    depth = len(Path(run_dir).resolve().relative_to(Path(run_root).resolve()).parts)
    if depth > 2:
        # Deeper than a run or a sweep job (<root>/<run>, <root>/<sweep>/<job>): a smoke run's scratch
        # directory. rebuild() does not look there either, so the two agree.
        logger.info("registry: %s is a scratch run (a smoke run): not registered", run_dir)
        return None
    try:
        entry = checkpoint_of_stage(run_dir, stage, run_root)
        if entry is None:
            logger.warning("registry: %s/%s is not finished: nothing to register", run_dir, stage)
            return None
        Registry.at(run_root).register(entry)
    except (RegistryError, OSError, sqlite3.Error) as exc:
        logger.warning(
            "registry: could not register %s/%s (%s); `octrain checkpoints rebuild` adds it later", run_dir, stage, exc
        )
        return None
    logger.info("registry: registered %s", entry.name)
    return entry
