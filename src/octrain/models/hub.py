"""Models and adapters on the Hugging Face Hub, named ``hub:ORG/REPO[/SUBFOLDER][@REVISION]``.

The paper's adapters sit in subfolders of one repository per base model
(``hub:maius/llama-3.1-8b-it-personas/sarcasm``); a reference fetches only its subfolder, through
``huggingface_hub`` into its own cache, once. After that it resolves offline (``HF_HUB_OFFLINE=1``
included); offline before that, the error says so. The same reference works wherever a model is named:
a run's ``student.path``/``teacher.path`` (:func:`octrain.models.builtin.resolve_model_path`) and the
MODEL of ``sample``, ``chat``, ``serve``, ``export`` and ``eval`` (:func:`octrain.use.model_choice.choose_model`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from octrain.core.errors import ConfigError

HUB_PREFIX = "hub:"
_REPO_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class HubRef:
    """A parsed ``hub:`` reference."""

    repo_id: str  # ORG/REPO
    subfolder: str | None = None  # a folder inside the repository (the paper's per-persona adapters)
    revision: str | None = None  # a branch, tag or commit; None: the default branch

    def __str__(self) -> str:
        path = self.repo_id + (f"/{self.subfolder}" if self.subfolder else "")
        return HUB_PREFIX + path + (f"@{self.revision}" if self.revision else "")


def is_hub_ref(spec: str) -> bool:
    return spec.startswith(HUB_PREFIX)


def parse_hub_ref(spec: str) -> HubRef:
    """``hub:ORG/REPO[/SUBFOLDER...][@REVISION]`` as its parts.

    Raises:
        ConfigError: naming the reference and the expected form.
    """
    body = spec[len(HUB_PREFIX) :] if is_hub_ref(spec) else spec
    path, _, revision = body.partition("@")
    parts = [part for part in path.split("/")]
    if len(parts) < 2 or not all(_REPO_PART.match(part) for part in parts) or (_ and not revision):
        raise ConfigError(
            f"{spec!r}: expected hub:ORG/REPO, hub:ORG/REPO/SUBFOLDER or either with @REVISION "
            "(letters, digits, '.', '_' and '-' in each part)"
        )
    return HubRef("/".join(parts[:2]), "/".join(parts[2:]) or None, revision or None)


def fetch_hub_ref(spec: str) -> Path:
    """The local folder a ``hub:`` reference names, downloaded into the Hugging Face cache if not there yet.

    Raises:
        ConfigError: no such repository, revision or subfolder; or offline with nothing cached.
    """
    ref = parse_hub_ref(spec)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    patterns = [f"{ref.subfolder}/*"] if ref.subfolder else None
    try:
        folder = Path(snapshot_download(ref.repo_id, revision=ref.revision, allow_patterns=patterns))
    except RepositoryNotFoundError:
        raise ConfigError(f"{ref}: no repository {ref.repo_id} on the Hub (or it is private: log in)") from None
    except RevisionNotFoundError:
        raise ConfigError(f"{ref}: {ref.repo_id} has no revision {ref.revision!r}") from None
    except (LocalEntryNotFoundError, EntryNotFoundError) as error:
        raise ConfigError(
            f"{ref}: not in the local Hugging Face cache, and the Hub cannot be reached (offline: "
            "HF_HUB_OFFLINE=1 or no network); fetch it once with network access" + (f" ({error})" if str(error) else "")
        ) from None
    target = folder / ref.subfolder if ref.subfolder else folder
    if not target.is_dir() or not any(target.iterdir()):
        raise ConfigError(f"{ref}: {ref.repo_id} has no folder {ref.subfolder!r} at that revision")
    return target
