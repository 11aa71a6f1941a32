"""What a stage needs, and how that is judged against a card: fits, tight, or does not fit.

A :class:`Need` is one model of one stage on one GPU, in GiB by part (weights, LoRA, runtime,
activations, ...). It is judged two ways, because the two kinds of process take memory differently:

* a vLLM engine takes ``gpu_memory_utilization x card`` whatever the model needs and refuses to
  start when the KV cache left inside that share cannot hold one ``max_model_len`` sequence. It
  *fits* when the KV also holds :data:`USEFUL_SEQUENCES` sequences of the stage's length: decoding
  reads all the weights once per step, so a batch of a few sequences pays almost the same per step
  as a full one, and throughput falls roughly in proportion to the number of sequences that fit;
* a training (and transformers' generate) allocates what it uses: it fits below
  :data:`TRAIN_HEADROOM` of the card and is tight up to the card's size.

Cards are named by their size in GB (24, 48, 80, 141) and judged by what PyTorch sees of them
(:data:`CARD_GIB`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

GIB = 1024**3
MIB = 1024**2

CARDS = (24, 48, 80, 141)

# What PyTorch and vLLM see as a card's total memory (torch.cuda.mem_get_info), in GiB, for the
# usual cards of each size: a card sold as "80 GB" is not 80 GiB free to use. 24 GB: A10/L4 class;
# 48 GB: L40S/A40; 80 GB: H100; 141 GB: H200/H20 ("total capacity of 139.72 GiB" in vLLM's reports).
CARD_GIB: dict[int, float] = {24: 22.0, 48: 44.5, 80: 79.2, 141: 139.7}


def card_gib(card: float) -> float:
    """Usable GiB of a card named by its size in GB (24, 48, 80, 141); other numbers are taken as GiB."""
    return CARD_GIB.get(int(card), float(card)) if float(card).is_integer() else float(card)


USEFUL_SEQUENCES = 32  # an engine "fits" when its KV cache holds this many sequences of the stage's length
TRAIN_HEADROOM = 0.92  # share of the card a training may plan to use: the caching allocator fragments
TRAIN_CONTEXT_GIB = 1.0  # CUDA context and cuBLAS workspace, outside PyTorch's allocator


@dataclass(frozen=True)
class Verdict:
    """How one need sits on one card."""

    status: str  # "fits", "tight" or "no"
    text: str  # what the table cell says


@dataclass
class Need:
    """What one model of one stage needs on one GPU, in GiB, and how it is judged against a card."""

    label: str
    kind: str  # "vllm", "train" (also transformers' generate: no preset share) or "none"
    parts: dict[str, float] = field(default_factory=dict)  # GiB by component (KV excluded for engines)
    share: float = 1.0  # vLLM: the share of the card the engine takes
    kv_token_bytes: float = 0.0  # vLLM/hf: KV cache per token, per GPU
    min_kv_tokens: int = 0  # KV the engine cannot start without (one max_model_len sequence)
    useful_kv_tokens: int = 0  # KV for USEFUL_SEQUENCES sequences of this stage's length
    seq_tokens: int = 0  # one sequence of this stage, in tokens
    gpus: int = 1
    notes: list[str] = field(default_factory=list)

    @property
    def fixed(self) -> float:
        return sum(self.parts.values())

    @property
    def minimum(self) -> float:
        """GiB without which the stage cannot run at all."""
        return self.fixed + self.min_kv_tokens * self.kv_token_bytes / GIB

    @property
    def comfortable(self) -> float:
        """GiB for it to run at a useful speed (engines: KV for USEFUL_SEQUENCES sequences)."""
        return self.fixed + self.useful_kv_tokens * self.kv_token_bytes / GIB

    def judge(self, card: float) -> Verdict:
        total = card_gib(card)
        gpus = f" on {self.gpus} GPUs" if self.gpus > 1 else ""
        if self.kind == "none":
            return Verdict("fits", "no GPU")
        if self.kind == "vllm":
            room = self.share * total - self.fixed
            sequences = room * GIB / self.kv_token_bytes / max(self.seq_tokens, 1) if room > 0 else 0.0
            if room * GIB < self.min_kv_tokens * self.kv_token_bytes:
                return Verdict("no", "no")
            kv = f"KV {room:.0f} GiB, ~{_count(sequences)} seqs{gpus}"
            if room * GIB < self.useful_kv_tokens * self.kv_token_bytes:
                return Verdict("tight", f"tight: {kv}")
            return Verdict("fits", f"fits: {kv}")
        # Training (and transformers' generate) allocates what it uses: it fits below the headroom
        # line, is tight up to the card's size (or, for generate, when only a smaller batch fits).
        peak = self.comfortable
        if peak <= TRAIN_HEADROOM * total:
            return Verdict("fits", f"fits{gpus}")
        if peak <= total or self.minimum <= TRAIN_HEADROOM * total:
            return Verdict("tight", f"tight{gpus}")
        return Verdict("no", "no")


def _count(value: float) -> str:
    return f"{value:.0f}" if value < 1000 else f"{value / 1000:.1f}k"


def short_name(path: str) -> str:
    """A model's name without its Hub organisation or directories, for a table's narrow column."""
    return path.rsplit("/", 1)[-1]


def size_text(nbytes: float) -> str:
    """``12 GiB`` or ``300 MiB``."""
    return f"{nbytes / GIB:.0f} GiB" if nbytes >= GIB else f"{nbytes / MIB:.0f} MiB"
