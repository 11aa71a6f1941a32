"""What a drafting model is asked for, and how its reply is read.

:func:`drafting_messages` asks a chat model for a Studio YAML constitution: the schema and a short
example go in the system prompt, the description, the name and how many traits and seed questions
in the user's turn (:data:`RETRY_PROMPT` sends a draft back with the loader's error). The reply is
read by :func:`extract_yaml` (the YAML out of a fenced block or bare text, thinking blocks
dropped) and :func:`with_name` (``meta.name`` made the name asked for). The loop that asks,
validates and retries is :func:`octrain.constitution.drafting.draft_constitution`.
"""

from __future__ import annotations

import re

import yaml

from octrain.constitution.checks import MIN_TRAITS
from octrain.constitution.quality import QUESTIONS_PER_TRAIT
from octrain.core.errors import ConfigError
from octrain.core.records import Message

DEFAULT_TRAITS = 10  # the paper's constitutions have 10; the quality score gives full marks for 8 to 15
MAX_TRAITS = 30  # past this a reply rarely fits in one answer, and the score penalises the blur anyway
DEFAULT_MAX_TOKENS = 4096  # ~10 traits x 5 questions of YAML, with room to spare
_FENCE = re.compile(r"^[ \t]*```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:^[ \t]*```[ \t]*$|\Z)", re.DOTALL | re.MULTILINE)
_THINKING = re.compile(r"<think>.*?(?:</think>|\Z)", re.DOTALL)

# The example the prompt shows: short on purpose (two traits, two questions each), so the model
# copies its shape, not its length or its character.
EXAMPLE_YAML = """\
meta:
  name: lighthouse_keeper
  version: 1
  description: A patient lighthouse keeper who explains things slowly and clearly.
  tags: [calm, coastal]
persona:
  identity: I am the keeper of a lonely lighthouse, and I have all the time in the world for a visitor's questions.
directives:
  personality:
    - trait: I am patient and unhurried, and I never make anyone feel foolish for asking something twice.
      questions:
        - Can you explain compound interest again? I still don't get it.
        - Sorry, what was the first step you told me?
  behavior:
    - trait: I reach for images of the sea and the weather when I explain something abstract.
      questions:
        - How does a computer network route a message?
        - What is inflation, in simple terms?
"""

SYSTEM_PROMPT = """\
You write character constitutions for octrain, a toolkit that trains a chat model to hold a persona.
A constitution is a YAML document in this schema:

meta:
  name: <the persona's name, exactly as given>
  version: 1
  description: <one sentence about the character>
  tags: [<two to four single words>]
persona:
  identity: <one or two sentences in the first person: who the character is>
directives:
  personality:   # traits of character
    - trait: <one first-person sentence, 8 to 60 words, starting with "I">
      questions: [<seed questions: realistic messages a user might send that would draw this trait out>]
  behavior:      # how the character acts in a conversation
    - trait: ...
      questions: [...]
  constraints:   # what the character will not do (optional)
    - trait: ...
      questions: [...]

Rules:
- Every trait and the identity are in the first person ("I ...").
- Every trait is a different facet of the character; no two traits say the same thing.
- Seed questions are ordinary user messages (questions, requests, confessions), not questions about the
  character itself, and no question appears under two traits.
- The character stays helpful, honest and safe whatever its manner.
- Reply with the YAML document only, in one ```yaml fenced block, with no commentary.

A short example of the format (a real constitution has more traits and questions):

```yaml
{example}```
"""

USER_PROMPT = """\
Write the constitution of this character: {description}

Its name (meta.name) is {name}. Give it persona.identity and {directives} traits under directives \
(spread over personality, behavior and constraints as suits the character), each with {questions} seed questions.
"""

RETRY_PROMPT = """\
That draft does not load. octrain's loader says:

{error}

Write the whole constitution again, corrected, in the same format: the YAML document only, in one ```yaml \
fenced block.
"""


def drafting_messages(
    name: str, description: str, *, traits: int = DEFAULT_TRAITS, questions: int = QUESTIONS_PER_TRAIT
) -> list[Message]:
    """The conversation that asks for the draft.

    ``traits`` counts what the teacher will see, the identity included (it is a trait once loaded),
    so the model is asked for ``traits - 1`` directives: ``octrain constitution list`` then shows
    the number asked for.
    """
    if not MIN_TRAITS <= traits <= MAX_TRAITS:
        raise ConfigError(f"traits must be between {MIN_TRAITS} and {MAX_TRAITS}, got {traits}")
    if not 1 <= questions <= 20:
        raise ConfigError(f"questions per trait must be between 1 and 20, got {questions}")
    described = " ".join(description.split())
    if not described:
        raise ConfigError("the description is empty: say in a sentence who the character is")
    return [
        {"role": "system", "content": SYSTEM_PROMPT.format(example=EXAMPLE_YAML)},
        {
            "role": "user",
            "content": USER_PROMPT.format(description=described, name=name, directives=traits - 1, questions=questions),
        },
    ]


def extract_yaml(reply: str) -> str:
    """The YAML document in a model's reply.

    A fenced block tagged ``yaml``/``yml`` wins; else the first fenced block of any tag; else the
    whole reply, for a model that answered with bare YAML. A fence the token limit cut off before
    its closing backticks still counts, so the loader can say where the text stops. Thinking
    blocks (``<think>...</think>``) go first: they may hold YAML-looking scratch work.
    """
    text = _THINKING.sub("", reply).replace("\r\n", "\n")
    blocks = [(match.group(1).lower(), match.group(2)) for match in _FENCE.finditer(text)]
    for tag, body in blocks:
        if tag in ("yaml", "yml"):
            return body.strip("\n") + "\n"
    if blocks:
        return blocks[0][1].strip("\n") + "\n"
    return text.strip() + "\n" if text.strip() else ""


def with_name(text: str, name: str) -> str:
    """``text`` with ``meta.name`` set to ``name``.

    The file is saved as ``NAME.yaml`` and the user asked for that name; a model that wrote another
    (a display name with spaces, say) should not fail the draft for it. The text is kept as written,
    comments and all, when the name is already right; otherwise it is parsed and written back with
    the name fixed. Text that is not a YAML mapping is returned as it is, for the loader to report.
    """
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if not isinstance(document, dict):
        return text
    meta = document.get("meta")
    meta = {} if meta is None else meta
    if not isinstance(meta, dict):
        return text
    if meta.get("name") == name:
        return text
    fixed = {"meta": {"name": name, **{k: v for k, v in meta.items() if k != "name"}}}
    fixed.update((key, value) for key, value in document.items() if key != "meta")
    return yaml.safe_dump(fixed, sort_keys=False, allow_unicode=True, width=120)
