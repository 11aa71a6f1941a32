"""Does an exported (or served) model answer as the trained one does? A check on a few prompts.

This module is the check's entry point; its parts live in modules of their own:

* :mod:`octrain.use.parity_reference`: the trained model (its base and adapter through PEFT, in
  float32) answers a few prompts greedily, and what it said, with by how much each chosen token led
  the runner-up, is the :class:`Reference` (:func:`reference_of`);
* :mod:`octrain.use.parity_candidates`: an export read back from its files as a :class:`Candidate`
  (merged weights: :func:`hf_candidate`; an adapter: :func:`adapter_candidate`; a GGUF file with its
  Ollama Modelfile: :func:`gguf_candidate`);
* :mod:`octrain.use.parity_check`: the candidate held to the reference (:func:`check`; a server's
  answers as text: :func:`check_texts`), every difference named in a :class:`ParityReport`, which
  :meth:`ParityReport.raise_if_different` turns into one :class:`ParityError`;
* :mod:`octrain.use.parity_forward`: how both are loaded and run (teacher-forced, one pass).
"""

from __future__ import annotations

from octrain.use.parity_candidates import Candidate, adapter_candidate, gguf_candidate, hf_candidate
from octrain.use.parity_check import ParityError, ParityReport, check, check_texts
from octrain.use.parity_reference import NEW_TOKENS, PARITY_PROMPTS, PromptReference, Reference, reference_of

__all__ = [
    "NEW_TOKENS",
    "PARITY_PROMPTS",
    "Candidate",
    "ParityError",
    "ParityReport",
    "PromptReference",
    "Reference",
    "adapter_candidate",
    "check",
    "check_texts",
    "gguf_candidate",
    "hf_candidate",
    "reference_of",
]
