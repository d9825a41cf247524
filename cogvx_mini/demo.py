"""`make demo`: run what the library has end to end and say where the outputs are.

python -m cogvx_mini.demo --out outputs/demo
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from cogvx_mini.shapes import pipeline_shapes
from cogvx_mini.toyworld import sample_video
from cogvx_mini.video_io import film_strip, save_video


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/demo"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    written = []
    for seed in args.seeds:
        video, caption = sample_video(seed, args.frames, args.size, args.size)
        shapes = pipeline_shapes(args.frames, args.size, args.size)
        gif = save_video(video, args.out / f"toyworld_{seed}.gif")
        png = args.out / f"toyworld_{seed}.png"
        fig, ax = plt.subplots(figsize=(12, 1.8))
        ax.imshow(film_strip(video))
        ax.set_title(caption, fontsize=9)
        ax.axis("off")
        fig.savefig(png, dpi=100, bbox_inches="tight")
        plt.close(fig)
        written += [gif, png]
        print(f"seed {seed}: {caption!r}")
        print(
            f"  video {list(shapes.video)} -> latents {list(shapes.latents)} -> "
            f"{shapes.video_tokens[1]} video tokens"
        )
    print(
        f"\nwrote {len(written)} files to {args.out.resolve()} "
        f"in {time.perf_counter() - start:.1f} s:"
    )
    for path in written:
        print(f"  {path}")


if __name__ == "__main__":
    main()
