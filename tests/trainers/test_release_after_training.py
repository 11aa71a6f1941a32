"""A stage that trains in the orchestrating process leaves no model behind once the runner releases.

Under ``accelerate launch -m octrain`` rank 0 trains in its own process and the next stage's vLLM
engine then asks GPU 0 for its share as free memory (issue 24, item 2). TRL's patched forward and
the trainer's callbacks keep the trained model in reference cycles after ``train()`` returns, so
only a garbage collection frees it; the runner's release must run one even when no sampling engine
was loaded. The script trains the real DPO stage on the tiny model with Python's automatic garbage
collection off, so that the outcome does not hang on when a collection happens to run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import REPO, patience

SCRIPT = """
import gc, json, sys
gc.disable()  # only the collections octrain runs itself

from pathlib import Path
from transformers import PreTrainedModel
from octrain.core.compose import compose_config
from octrain.core.config import StageName
from octrain.stages.context import RunContext
from octrain.run.pipeline import resolve_constitution
from octrain.core.records import PreferencePair, save_records
from octrain.run.workers import InlineRunner
from octrain.stages.table import stages_for
from octrain.stages.pairs import PAIRS_FILE

def live_models():
    return sum(isinstance(thing, PreTrainedModel) for thing in gc.get_objects())

run_dir = Path(sys.argv[1])
config = compose_config("pirate_tiny", ["stages=[dpo]"])
save_records(run_dir / "pairs" / PAIRS_FILE, [
    PreferencePair(id=f"pair-{i}", prompt=[{"role": "user", "content": f"Question {i}?"}],
                   chosen=[{"role": "assistant", "content": f"Arr matey, answer {i}!"}],
                   rejected=[{"role": "assistant", "content": f"Answer {i}."}],
                   prompt_id=f"p{i}", teacher="t", student="s", constitution="pirate")
    for i in range(8)
])
runner = InlineRunner(RunContext(config=config, run_dir=run_dir, constitution=resolve_constitution(config)))
summary = runner.run(stages_for(config)[StageName.dpo])
trained = live_models()
runner.release()
print("RESULT " + json.dumps({"steps": summary["steps"], "before": trained, "after": live_models()}))
"""


def test_the_trained_model_is_gone_after_the_runners_release(tmp_path: Path) -> None:
    script = tmp_path / "train_and_release.py"
    script.write_text(SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "run")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=patience(600),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(next(x for x in done.stdout.splitlines() if x.startswith("RESULT ")).removeprefix("RESULT "))
    assert result["steps"] >= 1
    assert result["before"] > 0  # train() returned, the stage is over, and the model is still alive: a cycle
    assert result["after"] == 0  # the release collected it (on a GPU: and emptied torch's cache)
