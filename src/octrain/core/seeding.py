"""Stable seeds for sampling: one per request, derived from the run seed and a record's id.

Backends seed each request's random stream separately (vLLM does so from the request's own
``SamplingParams.seed``), so giving a batch one shared seed makes identical conversations
(the K repeats of a prompt, the many samples of one reflection prompt) come back identical.
Every request therefore gets its own seed, computed from the run seed and the stable id of
the record it answers: a resumed run derives the same seeds as an uninterrupted one, and
two records never share a stream by accident.
"""

from __future__ import annotations

import hashlib

# vLLM, torch generators and OpenAI-compatible servers all accept a non-negative 31-bit integer.
_SEED_MASK = 0x7FFF_FFFF


def derive_seed(*parts: object) -> int:
    """A seed in ``[0, 2**31)`` that depends on ``parts`` only (their ``str`` forms, in order).

    ``derive_seed(run_seed, record_id)`` gives a record its own stream; more parts (a turn
    number, a sample index) split it further. SHA-256 rather than ``hash()``: Python salts
    string hashes per process, and the seeds must survive a restart.
    """
    text = "\x1f".join(str(part) for part in parts)
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") & _SEED_MASK
