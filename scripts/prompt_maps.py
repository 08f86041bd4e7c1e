"""Prompt maps for a finished run written before rayfed wrote them itself (runs now write
``prompt_tokens.json`` and each personalization its ``prompt_map.json``):

    .venv/bin/python scripts/prompt_maps.py RUN_DIR [PERSONALIZATION_NAME]

writes RUN_DIR/prompt_tokens.json from its global prompt and, with a personalization whose local
prompts are in a prompt cache (a study's ``prompt_cache/``, a search's ``local_prompts/``),
RUN_DIR/personalize/NAME/prompt_map.json at its last epoch; then draws both figures. Everything
runs in this process (runtime.executor=local): the backbone loads once.
"""

from __future__ import annotations

import sys
from pathlib import Path

from rayfed.config import load_config
from rayfed.data.sources import federated_data
from rayfed.outputs.checkpoint import load_prompt
from rayfed.outputs.plots_prompt import plot_prompt_map, plot_prompt_tokens
from rayfed.outputs.prompt_files import write_prompt_map, write_prompt_tokens
from rayfed.personalization.cache import PromptCache, load_local_prompts
from rayfed.personalization.settings import PersonalizeSettings
from rayfed.runtime.session import open_driver


def main(run_dir: Path, name: str | None) -> None:
    cfg = load_config(run_dir / "config.yaml", ["runtime.executor=local", "runtime.batch_clients=false"])
    prompt, meta = load_prompt(run_dir / "global_prompt.safetensors")
    with open_driver(cfg, federated_data(cfg)) as driver:
        write_prompt_tokens(run_dir, driver, prompt, int(meta.get("round", cfg.algorithm.rounds)))
        print(*plot_prompt_tokens(run_dir))
        if name is None:
            return
        personal = run_dir / "personalize" / name
        settings = PersonalizeSettings.from_config(load_config(personal / "config.yaml", []).personalize)
        found = [p for root in ("prompt_cache", "local_prompts")
                 if (p := PromptCache(run_dir / root, cfg.seed).path(settings)).is_file()]
        if not found:
            sys.exit(f"{personal}: its local prompts are in no prompt cache of {run_dir}")
        trained = load_local_prompts(found[0])
        write_prompt_map(personal, driver, prompt, {c: p[settings.epochs] for c, (p, _) in trained.items()},
                         settings.epochs)
        print(*plot_prompt_map(personal))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else None)
