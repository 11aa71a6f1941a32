"""The Tinker sampler against a fake service (tests/tinker_fake.py): rendering, seeds, concurrency, checks.

No network and no key: the fake stands in for the SDK's clients and returns the SDK's own
types, with text drawn from octrain's tiny offline model. A live smoke test, marked
``tinker``, runs only with ``-m tinker`` and a real ``TINKER_API_KEY``.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

pytest.importorskip("tinker")

from octrain.core.config import SamplerBackend, SamplerConfig, TinkerOptions
from octrain.core.errors import ConfigError
from octrain.samplers.base import SamplingParams
from octrain.trainers import tinker_common
from tinker_fake import FakeService

TINY = "builtin:tiny-qwen3"
GOOD_KEY = "tml-" + "x" * 40
CONVERSATION = [{"role": "user", "content": "Tell me about the sea."}]


@pytest.fixture
def service(monkeypatch: pytest.MonkeyPatch, tiny_model_path: str) -> FakeService:
    """A fake service behind octrain's session factory, and a well-formed key in the environment."""
    fake = FakeService([TINY], sample_delay=0.02)
    monkeypatch.setenv("TINKER_API_KEY", GOOD_KEY)
    monkeypatch.setattr(tinker_common, "SERVICE_FACTORY", lambda options: fake)
    tinker_common.forget_sessions()
    yield fake
    tinker_common.forget_sessions()


def make_sampler(**kwargs: Any) -> Any:
    from octrain.samplers.tinker_sampler import TinkerSampler

    return TinkerSampler(TINY, show_progress=False, **kwargs)


def test_prompts_are_rendered_as_the_local_samplers_render_them(service: FakeService, tiny_model_path: str) -> None:
    from transformers import AutoTokenizer

    from octrain.samplers.rendering import prompt_token_ids

    sampler = make_sampler()
    prefill = [*CONVERSATION, {"role": "assistant", "content": "Arr, the sea"}]
    sampler.chat([CONVERSATION, prefill], SamplingParams(max_new_tokens=4, seed=1))
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    sent = [tokens for tokens, _ in service.sample_requests]
    expected = [tuple(prompt_token_ids(tokenizer, c, enable_thinking=False)) for c in (CONVERSATION, prefill)]
    assert sent == expected


def test_repeated_prompts_get_distinct_seeds_and_stop_at_end_of_turn(service: FakeService) -> None:
    sampler = make_sampler()
    results = sampler.chat([CONVERSATION] * 3, SamplingParams(n=2, max_new_tokens=6, temperature=1.0, seed=7))
    assert [len(row) for row in results] == [2, 2, 2]
    seeds = [params.seed for _, params in service.sample_requests]
    assert len(seeds) == 6 and len(set(seeds)) == 6
    params = service.sample_requests[0][1]
    assert params.max_tokens == 6 and params.temperature == 1.0 and params.top_p == 0.95
    eos = sampler.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert eos in params.stop  # the end of turn, not only the EOS the SDK would stop at implicitly
    # The same seeds again: the same text (a resumed stage redraws what it drew).
    again = sampler.chat([CONVERSATION] * 3, SamplingParams(n=2, max_new_tokens=6, temperature=1.0, seed=7))
    assert again == results


def test_explicit_seeds_are_used_per_request(service: FakeService) -> None:
    from octrain.core.seeding import derive_seed

    sampler = make_sampler()
    sampler.chat([CONVERSATION, CONVERSATION], SamplingParams(max_new_tokens=3), seeds=[11, 12])
    assert [p.seed for _, p in service.sample_requests] == [derive_seed(11, 0), derive_seed(12, 0)]


def test_requests_in_flight_stay_within_the_bound(service: FakeService) -> None:
    sampler = make_sampler(options=TinkerOptions(max_concurrency=3))
    results = sampler.chat([CONVERSATION] * 10, SamplingParams(max_new_tokens=2, seed=3))
    assert len(results) == 10
    assert service.max_in_flight == 3  # all three went out together, never a fourth


def test_a_dropped_connection_is_retried(service: FakeService) -> None:
    service.failures = 2
    sampler = make_sampler(options=TinkerOptions(max_concurrency=4, request_attempts=3))
    results = sampler.chat([CONVERSATION] * 3, SamplingParams(max_new_tokens=2, seed=5))
    assert all(len(row) == 1 for row in results)
    assert len(service.sample_requests) == 5  # three requests, two of them twice


def test_retries_stop_after_the_configured_attempts(service: FakeService) -> None:
    import tinker

    service.failures = 5
    sampler = make_sampler(options=TinkerOptions(max_concurrency=1, request_attempts=2))
    with pytest.raises(tinker.APIConnectionError):
        sampler.chat([CONVERSATION], SamplingParams(max_new_tokens=2, seed=5))


@pytest.mark.parametrize("key", [None, "", "sk-not-a-tinker-key", "tml-has a space"])
def test_a_missing_or_malformed_key_fails_before_any_request(
    monkeypatch: pytest.MonkeyPatch, service: FakeService, key: str | None
) -> None:
    if key is None:
        monkeypatch.delenv("TINKER_API_KEY", raising=False)
    else:
        monkeypatch.setenv("TINKER_API_KEY", key)
    with pytest.raises(ConfigError, match="TINKER_API_KEY"):
        make_sampler()
    assert service.calls == [] and service.sample_requests == []


def test_an_unserved_model_is_refused_with_the_served_list(service: FakeService) -> None:
    service.served = ["Qwen/Qwen3-8B", "Qwen/Qwen3-30B-A3B"]
    with pytest.raises(ConfigError, match=r"builtin:tiny-qwen3.*Qwen/Qwen3-30B-A3B, Qwen/Qwen3-8B"):
        make_sampler()
    assert [name for name, _ in service.calls] == ["get_server_capabilities"]
    assert service.sample_requests == []


def test_build_sampler_and_check_backend(service: FakeService, monkeypatch: pytest.MonkeyPatch) -> None:
    from octrain.core.config import ModelConfig
    from octrain.samplers import build_sampler, check_backend

    config = SamplerConfig(backend=SamplerBackend.tinker)
    check_backend(config)
    trained = service.create_lora_training_client(base_model=TINY, rank=4).result()
    path = trained.save_weights_for_sampler("final").result().path
    sampler = build_sampler(config, ModelConfig(path=TINY), adapter=path)
    assert sampler.model_path == path and path.startswith("tinker://")
    assert ("create_sampling_client", {"model_path": path, "base_model": None}) in service.calls
    [[answer]] = sampler.chat([CONVERSATION], SamplingParams(max_new_tokens=3, seed=2))
    assert answer.num_tokens > 0
    with pytest.raises(ConfigError, match="local adapter"):
        build_sampler(config, ModelConfig(path=TINY), adapter="/tmp/some/adapter")
    monkeypatch.delenv("TINKER_API_KEY")
    with pytest.raises(ConfigError, match="TINKER_API_KEY"):
        check_backend(config)


@pytest.mark.tinker
def test_live_sampling_smoke() -> None:
    """Against the real service: the lineup holds the recipe's model and one short answer comes back."""
    if not os.environ.get("TINKER_API_KEY"):
        pytest.skip("needs TINKER_API_KEY")
    from octrain.samplers.tinker_sampler import TinkerSampler

    tinker_common.forget_sessions()
    sampler = TinkerSampler("Qwen/Qwen3-8B", show_progress=False)
    [[answer]] = sampler.chat([CONVERSATION], SamplingParams(max_new_tokens=16, seed=1))
    assert answer.num_tokens > 0
