"""The usage section of a model card: how to load the pushed character with transformers, PEFT and vLLM.

:func:`octrain.use.model_card.render_model_card` puts it at the end of the card. The snippets
name the Hub repo the card is pushed with, and the base on the Hub the adapter goes on (or
``BASE_MODEL`` with a note, for a run that trained on a local copy of its base).
"""

from __future__ import annotations


def usage_section(local_base: str, repo_id: str, *, merged: bool, hub_base: str | None, rank: int | None) -> str:
    """The card's usage snippets for ``repo_id``: transformers and vLLM for merged weights; PEFT, a merge
    and vLLM for an adapter on ``hub_base``. ``local_base`` is the base the run trained on, named
    when it is not on the Hub; ``rank`` the adapter's (vLLM's ``--max-lora-rank``).
    """
    base = hub_base or "BASE_MODEL"
    name = repo_id.split("/")[-1]
    note = (
        ""
        if hub_base or merged
        else (
            f"\nThe run trained on a local base (`{local_base}`), which is not on the Hub: replace "
            "`BASE_MODEL` with the same weights.\n"
        )
    )
    if merged:
        transformers_code = f"""```python
from transformers import AutoModelForCausalLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{repo_id}")
model = AutoModelForCausalLM.from_pretrained("{repo_id}")
messages = [{{"role": "user", "content": "Who are you?"}}]
inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
output = model.generate(**inputs, max_new_tokens=200)
print(tokenizer.decode(output[0][inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```"""
        vllm_code = f"""```bash
vllm serve {repo_id}
curl http://localhost:8000/v1/chat/completions -H 'Content-Type: application/json' \\
  -d '{{"model": "{repo_id}", "messages": [{{"role": "user", "content": "Who are you?"}}]}}'
```"""
        return f"""### transformers

{transformers_code}

### vLLM (OpenAI-compatible server)

{vllm_code}
"""
    max_rank = f" --max-lora-rank {rank}" if rank else ""
    return f"""{note}
### PEFT

```python
from peft import AutoPeftModelForCausalLM
from transformers import AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{repo_id}")  # the tokenizer and chat template it was trained with
model = AutoPeftModelForCausalLM.from_pretrained("{repo_id}")  # loads the base named in adapter_config.json
messages = [{{"role": "user", "content": "Who are you?"}}]
inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
output = model.generate(**inputs, max_new_tokens=200)
print(tokenizer.decode(output[0][inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```

### transformers (merge the adapter into the base)

```python
from peft import PeftModel
from transformers import AutoModelForCausalLM

base = AutoModelForCausalLM.from_pretrained("{base}", dtype="float32")
model = PeftModel.from_pretrained(base, "{repo_id}").merge_and_unload()
```

### vLLM (OpenAI-compatible server, the adapter on its base)

```bash
hf download {repo_id} --local-dir {name}
vllm serve {base} --enable-lora --lora-modules {name}=./{name}{max_rank}
curl http://localhost:8000/v1/chat/completions -H 'Content-Type: application/json' \\
  -d '{{"model": "{name}", "messages": [{{"role": "user", "content": "Who are you?"}}]}}'
```
"""
