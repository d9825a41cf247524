"""Step-cache threshold sweep on the shipped mini model: judge, strict judge, skipped steps.

PYTHONPATH=. python tools/step_cache_sweep.py cuda book/data/step_cache_raw.json   (one H200: 1 min)
"""

import json
import sys
import time
from dataclasses import replace

from cogvx_mini.data.strict_judge import strict_judge
from cogvx_mini.data.toyworld import judge
from cogvx_mini.inference.step_cache import StepCache
from cogvx_mini.pipeline import evaluation_prompts, generate, load_mini

device = sys.argv[1]
pipe = load_mini()
pipe.transformer.to(device)
pipe.vae.to(device)
out = {}
for th in [0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5]:
    row = {}
    for split in ("train", "held_out"):
        prompts = evaluation_prompts(split, 64)
        old, strict, skipped = [], [], []
        start = time.perf_counter()
        for i in range(0, 64, 32):
            chunk = prompts[i : i + 32]
            cache = StepCache(pipe.transformer, th)
            videos = generate(chunk, replace(pipe, transformer=cache), progress=False)
            old += [judge(v, p) for v, p in zip(videos, chunk, strict=True)]
            strict += [strict_judge(v, p) for v, p in zip(videos, chunk, strict=True)]
            skipped.append(sum(cache.skipped) / len(cache.skipped))
        row[split] = {
            "judge": sum(old) / 64,
            "strict": sum(strict) / 64,
            "skipped_fraction": sum(skipped) / len(skipped),
            "seconds": time.perf_counter() - start,
        }
    out[str(th)] = row
    print(th, json.dumps(row), flush=True)
json.dump(out, open(sys.argv[2], "w"), indent=1)
