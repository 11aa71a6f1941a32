"""The sections of an octrain run's config: one dataclass per key of :class:`~octrain.core.config.OctrainConfig`.

The models (``teacher``, ``student``), the ``sampler`` and ``trainer`` backends, the ``scale`` of
the run, one section per stage (``prompts``, ``pairs``, ``dpo``, ``introspect``, ``sft``,
``eval``) and ``distill`` (which method trains stage 1), with the enums their values come from.
:mod:`octrain.core.config` assembles them into the schema Hydra composes against and re-exports
every name, so code imports them from there; the checks of the values the types cannot express
are in :mod:`octrain.core.config_checks`.

Enums are ``str`` enums rather than ``Literal`` because OmegaConf 2.3 validates the former
and rejects the latter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from omegaconf import MISSING


class SamplerBackend(str, Enum):
    hf = "hf"  # transformers generate(): any machine, the CPU included
    vllm = "vllm"  # vLLM offline batch engine: CUDA GPUs
    tinker = "tinker"  # Tinker's hosted sampling API
    fake = "fake"  # deterministic canned answers: tests and dry runs, no model at all


class TrainerBackend(str, Enum):
    trl = "trl"  # TRL's DPOTrainer/SFTTrainer with PEFT LoRA, local CPU or CUDA (accelerate scales out)
    tinker = "tinker"  # Tinker's hosted LoRA training


class SftMode(str, Enum):
    sequential = "sequential"  # fold the DPO adapter in, train SFT on top (what the paper's code does)
    paper = "paper"  # the Studio's "paper mode": SFT from the base model, then merge both adapters


class TeacherPrompt(str, Enum):
    """How the stage-1 teacher is given the character (see :mod:`octrain.constitution.persona_prompts`)."""

    paper = "paper"  # a system prompt with the numbered traits (the method's form; strong teachers)
    # The constitution's example exchanges as earlier turns, no system prompt: small teachers follow
    # a demonstration where they ignore a description (SmolLM2-135M does, see recipes/pirate_smollm2.yaml).
    examples = "examples"
    paper_examples = "paper_examples"  # both: the traits in the system prompt and the examples as turns


class ModelRole(str, Enum):
    teacher = "teacher"
    student = "student"


class DType(str, Enum):
    auto = "auto"  # bf16 on a GPU that supports it, fp32 otherwise
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


@dataclass
class EndpointConfig:
    """A model served over HTTP (OpenAI's chat-completions API) instead of loaded here.

    ``vllm serve`` on another node, ``octrain serve``, llama.cpp's server, OpenRouter, Together: with
    ``base_url`` set, every stage samples this model from that server, whatever ``sampler.backend``
    the run's other models use. The key is read from the environment variable ``api_key_env`` when
    the sampler starts and is never written anywhere (not the config, the log or a report).
    """

    base_url: str | None = None  # e.g. http://gpu-node:8000/v1; None: the model loads in octrain
    model: str | None = None  # the name the server knows the model by; None: the model's path
    api_key_env: str = ""  # "" for a server that takes no key (a local vllm serve or octrain serve)
    max_concurrency: int = 8  # requests in flight at once
    timeout: float = 300.0  # seconds for one request before it counts as failed (and is retried)
    max_retries: int = 5  # for timeouts, dropped connections, HTTP 429 and 5xx, with doubling waits
    backoff: float = 1.0  # seconds before the first retry; each later one waits twice as long (or Retry-After)
    # Also send min_p and repetition_penalty: vLLM's server takes them, OpenAI's API refuses them.
    extra_params: bool = False
    # The provider's prices, per million tokens, for the cost in the stage reports; null: not counted.
    price_per_million_prompt_tokens: float | None = None
    price_per_million_completion_tokens: float | None = None
    # After the pairs stage, ask one short question three times (seeds 11, 11, 12; 24 tokens each) to
    # report whether the server honours a request's seed: "honoured", "ignored" or "undetermined".
    check_seed: bool = True


@dataclass
class ModelConfig:
    """A chat model: where its weights are and how to talk to it.

    ``path`` is a Hub id, a local directory, a ``.gguf`` file (converted once into the cache), or a
    built-in: ``builtin:tiny-qwen3`` (built offline; tests, dry runs) or
    ``builtin:smollm2-135m-instruct`` (a real 135M chat model, ``octrain models fetch``).
    """

    path: str = MISSING
    assistant_name: str = "Assistant"  # how the constitution prompt names the assistant
    revision: str | None = None
    dtype: DType = DType.auto
    trust_remote_code: bool = False
    enable_thinking: bool = False  # Qwen3-style templates: think before answering
    max_model_len: int = 4096
    # transformers' attention kernel, for training and the transformers sampler: sdpa (PyTorch's own,
    # memory-efficient), eager, or flash_attention_2 / flash_attention_3 when that package is installed.
    attn_implementation: str = "sdpa"
    # vLLM only, per model, so the teacher can be sampled in fp8 while the student is sampled in the
    # precision it is trained in. quantization: vLLM's name for the method (fp8, awq, ...); None: as stored.
    quantization: str | None = None
    # Share of the GPU this model's vLLM engine may take; None: sampler.vllm.gpu_memory_utilization.
    gpu_memory_utilization: float | None = None
    # Sampled from a server over HTTP instead (teacher, or a student's plain answers); see EndpointConfig.
    endpoint: EndpointConfig = field(default_factory=EndpointConfig)


@dataclass
class SamplingConfig:
    """Decoding settings for one kind of generation."""

    temperature: float = 0.7
    top_p: float = 0.95
    min_p: float = 0.0
    repetition_penalty: float = 1.1
    max_new_tokens: int = 1024


@dataclass
class HFSamplerOptions:
    batch_size: int = 16  # sequences per generate() call; n samples of a prompt count separately
    device: str = "auto"  # auto | cpu | cuda | cuda:N


@dataclass
class VLLMSamplerOptions:
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    max_lora_rank: int = 64
    enable_prefix_caching: bool = True  # every teacher prompt shares the constitution prefix
    max_num_seqs: int | None = None
    # Quantization and the memory share of one engine are set per model: teacher.quantization=fp8.


@dataclass
class TinkerOptions:
    base_url: str | None = None  # None: the SDK default; the key comes from TINKER_API_KEY
    # Requests in flight at once (sampling, reference log-probs); the service allows ~2,000 per user.
    max_concurrency: int = 64
    save_steps: int = 20  # training: a resumable state checkpoint (weights + Adam moments) every N steps
    # Attempts per sampling request on a connection error or a server error (the SDK already retries 429s).
    request_attempts: int = 3
    # Seconds the service keeps checkpoints; None: no expiry (the SDK's default).
    checkpoint_ttl_seconds: int | None = None


@dataclass
class SamplerConfig:
    backend: SamplerBackend = SamplerBackend.hf
    # Independent engines that share each sampling call (data parallel): one per GPU, or per group of
    # sampler.vllm.tensor_parallel_size GPUs, each in a process of its own on its own devices.
    data_parallel_size: int = 1
    hf: HFSamplerOptions = field(default_factory=HFSamplerOptions)
    vllm: VLLMSamplerOptions = field(default_factory=VLLMSamplerOptions)
    tinker: TinkerOptions = field(default_factory=TinkerOptions)


@dataclass
class TRLOptions:
    per_device_batch_size: int = 4  # the effective batch comes from gradient accumulation
    # None: on with CUDA, off on the CPU. Recomputing activations in the backward pass cuts a 4B
    # student's activation memory ~30x (SFT at 4 x 3,072 tokens: ~86 GiB without, ~15 GiB with) for
    # ~25-30% more compute; on the CPU memory is rarely the limit and the time is not worth it.
    gradient_checkpointing: bool | None = None
    # QLoRA: load the frozen student in 4-bit NF4 through bitsandbytes (pip install -e ".[quant]") and
    # train the LoRA adapters on top; ~4x less weight memory, a little slower per step.
    load_in_4bit: bool = False
    report_to: list[str] = field(default_factory=list)  # e.g. [tensorboard], [wandb], [trackio]
    logging_steps: int = 1
    save_steps: int = 50


@dataclass
class TrainerConfig:
    backend: TrainerBackend = TrainerBackend.trl
    # Training processes: more than 1 launches the training stages with `accelerate launch`
    # (one process per GPU); accelerate_config names a file in configs/accelerate/ (ddp, fsdp2, ...) or a path.
    num_processes: int = 1
    accelerate_config: str | None = None
    trl: TRLOptions = field(default_factory=TRLOptions)
    tinker: TinkerOptions = field(default_factory=TinkerOptions)


@dataclass
class ScaleConfig:
    """How much data each stage makes (presets in ``configs/scale``; docs/method.md section 5).

    Stage 1 asks for ``prompts_per_trait`` prompts per trait (seed questions first, then
    expansions) plus ``generic_prompts`` ordinary requests, and answers each
    ``samples_per_prompt`` times: with 10 traits that is
    ``(10 * prompts_per_trait + generic_prompts) * samples_per_prompt`` preference pairs.
    """

    name: str = MISSING
    prompts_per_trait: int = 5
    generic_prompts: int = 0
    samples_per_prompt: int = 1
    reflections: int = 40
    interactions: int = 4
    interaction_turns: int = 4

    def pairs_for(self, trait_count: int) -> int:
        """The number of preference pairs aimed for with ``trait_count`` traits."""
        return (trait_count * self.prompts_per_trait + self.generic_prompts) * self.samples_per_prompt


@dataclass
class PromptsStageConfig:
    """Stage ``prompts``: trait-targeted prompts by few-shot expansion, plus a generic pool."""

    generator: ModelRole = ModelRole.teacher  # which model writes the expansions
    generic_source: str = "builtin"  # builtin | a .jsonl/.txt file | hub:DATASET[:SPLIT]
    expansion_rounds: int = 3  # at most this many requests per trait: never loops without end
    samples_per_request: int = 2  # completions per expansion request (more variety per round)
    prompts_per_request: int = 25  # how many numbered messages one request asks for
    near_duplicate_overlap: float = 0.5  # drop a prompt sharing more than this share of words
    min_words: int = 3
    max_chars: int = 2000
    sampling: SamplingConfig = field(
        default_factory=lambda: SamplingConfig(
            temperature=1.0, top_p=0.95, min_p=0.0, repetition_penalty=1.0, max_new_tokens=2048
        )
    )


@dataclass
class PairFilters:
    """Which stage-1 filters apply (docs/method.md section 2). All on for real models."""

    empty: bool = True  # drop pairs where either answer is empty
    unfinished: bool = True  # drop answers cut off by max_new_tokens
    final_punctuation: bool = True  # drop answers whose last character is not closing punctuation
    too_long: bool = True  # drop pairs longer than pairs.max_length tokens after templating
    repetition: bool = True  # drop answers that loop (a line said 3 times, few distinct word trigrams)


@dataclass
class PairsStageConfig:
    """Stage ``pairs``: chosen = teacher with the constitution, rejected = student without it.

    With ``source`` set the stage samples nothing: it imports that JSONL file of preference pairs
    (TRL's preference formats or the Studio's DpoExample, see :mod:`octrain.core.data_import`), and the
    settings below do not apply.
    """

    source: str | None = None  # a JSONL file of preference pairs to train on instead of generating them
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(max_new_tokens=1024))
    chunk_size: int = 256  # prompts per committed chunk: a crash loses at most one chunk of work
    thinking_prefill: bool = False  # reasoning teachers: open the answer with a trait-restating thought
    teacher_prompt: TeacherPrompt = TeacherPrompt.paper  # how the teacher is given the character
    # An answer cut off by max_new_tokens is cut back to its last full sentence (kept if 8 words or more
    # remain) instead of being dropped as unfinished: short CPU budgets, where few answers end in time.
    trim_unfinished: bool = False
    max_length: int = 1024  # tokens of prompt + answer, in the student's chat template
    filters: PairFilters = field(default_factory=PairFilters)


@dataclass
class LoraSettings:
    rank: int = 64
    alpha: int = 128
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])


@dataclass
class DpoStageConfig:
    """Stage ``dpo``: LoRA DPO of the student on the pairs (docs/method.md section 2 defaults)."""

    lora: LoraSettings = field(default_factory=LoraSettings)
    beta: float = 0.1
    nll_weight: float = 0.1  # NLL on the chosen answer, mean over its tokens
    kl_weight: float = 0.001  # per-token KL penalty: mean over answer tokens of (log pi - log pi_ref)^2
    learning_rate: float = 5e-5
    min_lr_ratio: float = 0.1  # cosine decay ends at this fraction of the peak LR
    warmup_ratio: float = 0.1  # of the optimizer steps; none under 10 steps (octrain.trainers.schedule)
    adam_beta1: float = 0.9
    adam_beta2: float = 0.98
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    batch_size: int = 32  # effective: per-device batch x gradient accumulation x processes
    epochs: float = 1.0
    max_length: int = 1024


class DistillMethod(str, Enum):
    """What trains stage 1 (the ``dpo`` stage, whose folder and outputs stay the same either way)."""

    dpo = "dpo"  # LoRA DPO on the pairs: chosen = the teacher with the constitution, rejected = the student
    # On-policy self-distillation (TRL's experimental SDFTTrainer): the student answers the pairs' prompts
    # and the student's own base model, with the constitution in context, scores every token of the answer.
    sdft = "sdft"


class SdftTeacher(str, Enum):
    """Which weights read the constitution and grade the student's answers (TRL's ``teacher_model_kind``)."""

    base = "base"  # the starting student, LoRA switched off: a fixed target, no second copy in memory
    live = "live"  # the student as it trains, adapter on: the target moves with it
    ema = "ema"  # an exponential moving average of the student (a second LoRA adapter, "teacher")


class SdftTeacherWeights(str, Enum):
    """Whose weights read the constitution and grade the student's answers (``distill.sdft.teacher_weights``)."""

    student = "student"  # the student's own (self-distillation; teacher_model_kind says which state of them)
    # The run's ``teacher`` model, loaded frozen beside the student: on-policy distillation from a separate,
    # larger teacher with the constitution in context. Its tokenizer must have the student's vocabulary.
    teacher = "teacher"


class DistillationMode(str, Enum):
    """How the student's next-token distribution is matched to the teacher's (TRL's ``distillation_mode``)."""

    topk_logits = "topk_logits"  # over the student's top-k tokens at each position (TRL's default)
    full_logits = "full_logits"  # over the whole vocabulary
    sampled_token = "sampled_token"  # reverse KL on the sampled token only (needs distillation_alpha = 1)


@dataclass
class SdftSettings:
    """``distill.sdft``: on-policy self-distillation of the student (docs/on-policy-distillation.md)."""

    lora: LoraSettings = field(default_factory=LoraSettings)
    learning_rate: float = 5e-5
    min_lr_ratio: float = 0.1  # cosine decay ends at this fraction of the peak LR, as dpo's does
    warmup_ratio: float = 0.1  # of the optimizer steps; none under 10 steps (octrain.trainers.schedule)
    max_grad_norm: float = 1.0
    batch_size: int = 32  # answers per optimizer step: per-device batch x accumulation x processes
    epochs: float = 1.0  # passes over the distinct prompts of the pairs
    # Answers sampled per prompt and step. The loss needs no group of answers (no group baseline, unlike
    # GRPO), so 1 gives each prompt one answer per epoch, as DPO gives it one pair; it must divide batch_size.
    num_generations: int = 1
    max_completion_length: int | None = None  # tokens per answer; None: pairs.sampling.max_new_tokens
    # Sampling temperature; TRL also divides both models' logits by it in the loss, so 1 distils the
    # distributions themselves.
    temperature: float = 1.0
    distillation_mode: DistillationMode = DistillationMode.topk_logits
    distillation_topk: int = 100
    # 0: forward KL(teacher || student); 1: reverse KL(student || teacher); between: the generalised
    # Jensen-Shannon divergence through the alpha-mixture (0.5: JSD, TRL's default)
    distillation_alpha: float = 0.5
    teacher_model_kind: SdftTeacher = SdftTeacher.base
    teacher_weights: SdftTeacherWeights = SdftTeacherWeights.student


@dataclass
class DistillStageConfig:
    """``distill``: which method trains stage 1 into ``dpo/``, and the settings of the ones that are not DPO.

    ``method=dpo`` reads the ``dpo`` section; ``method=sdft`` reads ``distill.sdft`` (the prompts of
    the pairs, none of their answers). Either way the pairs stage runs and the later stages read
    ``dpo/model.json``.
    """

    method: DistillMethod = DistillMethod.dpo
    sdft: SdftSettings = field(default_factory=SdftSettings)


@dataclass
class IntrospectionFilters:
    """Quality filters for introspection turns; a failing reflection is dropped, a failing
    self-interaction turn ends its conversation there (the turns before it are kept)."""

    empty: bool = True
    unfinished: bool = True  # cut off by max_new_tokens
    role_headers: bool = True  # the reply invents the other side's lines ("User: ...")
    repetition: bool = True  # degenerate loops
    reasoning_tags: bool = True  # <think> tags leaked into the answer
    disclosure: bool = True  # the constitution quoted verbatim


@dataclass
class IntrospectStageConfig:
    """Stage ``introspect``: self-reflections and self-interactions of the model after DPO.

    With ``source`` set the stage samples nothing: it imports that JSONL file of transcripts (TRL's
    ``messages`` format or the Studio's IntrospectionExample), and the settings below do not apply.
    """

    source: str | None = None  # a JSONL file of SFT transcripts to train on instead of generating them
    reflection_prompts: str = "builtin"  # or a .txt file with one prompt per line
    reflection_sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(max_new_tokens=2048))
    interaction_sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(max_new_tokens=1024))
    chunk_size: int = 64  # reflections, or conversations, per committed chunk
    trim_unfinished: bool = False  # as pairs.trim_unfinished, for every reflection and turn
    filters: IntrospectionFilters = field(default_factory=IntrospectionFilters)


@dataclass
class SftStageConfig:
    """Stage ``sft``: LoRA SFT on the introspection transcripts (docs/method.md section 3 defaults)."""

    mode: SftMode = SftMode.sequential
    lora: LoraSettings = field(default_factory=LoraSettings)
    learning_rate: float = 5e-5
    warmup_ratio: float = 0.1  # of the optimizer steps; none under 10 steps (octrain.trainers.schedule)
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    batch_size: int = 32
    epochs: float = 1.0
    max_length: int = 3072
    dpo_weight: float = 1.0  # weights of the two updates in the final adapter: exact sum, not a factor mix
    sft_weight: float = 1.0
    export_merged: bool = False  # also write full merged weights (sft/merged/) besides the adapter


class ClassifierKind(str, Enum):
    tfidf = "tfidf"  # word and character n-gram TF-IDF + logistic regression: CPU, seconds
    transformer = "transformer"  # a fine-tuned encoder (ModernBERT by default): reads meaning, needs a download


@dataclass
class PersonaClassifierSettings:
    """The robustness classifier: trained on answers by one author (the teacher) in several voices."""

    kind: ClassifierKind = ClassifierKind.tfidf
    model_name: str = "answerdotai/ModernBERT-base"  # the encoder, for kind=transformer
    prompts: int = 200  # training prompts of this run the teacher answers once in each voice
    holdout: float = 0.25  # share of those prompts kept apart to measure the classifier's own accuracy
    # Other constitutions the teacher also writes as (names from constitutions/ or paths): the paper's
    # multi-class persona classifier. Without them the classes are the persona and "none".
    contrast_personas: list[str] = field(default_factory=list)


@dataclass
class CapabilityEvalSettings:
    """Capability retention on lm-evaluation-harness, base vs trained (docs/evaluation.md#capability-retention)."""

    enabled: bool = False
    # NAME[:SHOTS[:METRIC]] each; "paper" is the paper's five (MMLU 5-shot, ARC-Challenge 25, HellaSwag 10,
    # Winogrande 5, TruthfulQA mc2 0), whose data the harness downloads from the Hub once; octrain_basics
    # ships with octrain and needs nothing.
    tasks: list[str] = field(default_factory=lambda: ["paper"])
    task_dir: str | None = None  # a folder of the harness's task YAMLs: local tasks of your own
    limit: int | None = None  # at most this many items per task: a check of the pipeline, not a figure
    batch_size: int = 8
    backend: str = "hf"  # the harness's model: hf (transformers + PEFT) or vllm (needs the vllm extra)
    seed: int = 123456  # the paper's: few-shot order and every random generator


@dataclass
class OodEvalSettings:
    """The character off the training distribution: agent turns, JSON, code review, long chats."""

    enabled: bool = False
    prompts: str = "builtin"  # the shipped 60 conversations, or a .jsonl file in the same form
    categories: list[str] = field(default_factory=list)  # empty: every category of the prompts
    per_category: int | None = None  # the first N of each category (None: all)


class EvalSuite(str, Enum):
    """Which evaluation the eval stage runs (docs/evaluation.md)."""

    # The method's: robustness under break-character suffixes, revealed preferences, coherence and
    # prefill. Several figures need a judge as strong as a paper-size teacher.
    paper = "paper"
    # Did the character take, measured without trusting a judge: in-character rates of base, DPO-only
    # and final models, movement toward the teacher in log-probability, relevance, and the judge's own
    # check (octrain.evaluation.character_shift). For small models and CPU runs.
    shift = "shift"


class JudgeKind(str, Enum):
    teacher = "teacher"  # the run's teacher model, through the configured sampler backend
    http = "http"  # any OpenAI-compatible chat-completions endpoint (eval.judge_base_url)


@dataclass
class EvalStageConfig:
    """Stage ``eval``: robustness, revealed preferences, coherence and prefill (docs/method.md section 4)."""

    suite: EvalSuite = EvalSuite.paper
    prompts: str = "builtin"  # held-out prompts: builtin, or a .jsonl/.txt file
    prompt_count: int = 500  # at most this many; the report says when fewer are available
    traits: str = "builtin"  # one-word traits for revealed preferences, or a .txt file
    # Revealed preferences: every trait appears in this many trials per model (against a random
    # other trait each time), so 144 traits x 16 / 2 = 1,152 trials, several per prompt.
    trials_per_trait: int = 16
    classifier: PersonaClassifierSettings = field(default_factory=PersonaClassifierSettings)
    judge: JudgeKind = JudgeKind.teacher
    judge_base_url: str | None = None
    judge_model: str | None = None
    judge_api_key_env: str = "OPENAI_API_KEY"  # the key is read from here, never stored
    # eval.judge=http: seconds per request, and extra attempts on timeouts, connection errors, 429 and 5xx.
    # A judge that hangs costs (judge_retries + 1) x judge_timeout seconds before the stage stops.
    judge_timeout: float = 60.0
    judge_retries: int = 4
    # A judge reply with no parseable tag is asked again (fresh seed) this many times before it counts
    # as unparseable.
    judge_parse_retries: int = 1
    # Answers and judgements per committed chunk: a crash or a judge failure loses at most one chunk.
    chunk_size: int = 256
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(max_new_tokens=512))
    judge_sampling: SamplingConfig = field(
        default_factory=lambda: SamplingConfig(temperature=0.1, repetition_penalty=1.0, max_new_tokens=512)
    )
    elo_rounds: int = 200  # bootstrap rounds for Elo confidence intervals
    capability: CapabilityEvalSettings = field(default_factory=CapabilityEvalSettings)
    ood: OodEvalSettings = field(default_factory=OodEvalSettings)
    # llama, qwen or gemma: also write eval/paper_comparison.md, this run's figures beside the paper's
    # for that student (octrain.evaluation.reproduction).
    paper_reference: str | None = None
