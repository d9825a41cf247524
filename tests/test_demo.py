from cogvx_mini.demo import main


def test_demo_writes_a_gif_and_a_png_per_prompt_and_scores_toy_prompts(tmp_path, capsys):
    main(["--out", str(tmp_path), "--seen", "1", "--held-out", "1", "--steps", "2",
          "--prompt", "a cat plays the piano"])  # fmt: skip
    out = capsys.readouterr().out
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["00_seen.gif", "00_seen.png", "01_held-out.gif", "01_held-out.png",
                     "02_yours.gif", "02_yours.png"]  # fmt: skip
    assert all((tmp_path / n).stat().st_size > 0 for n in names)
    # Toy-world prompts get the judge's score; a free-form one cannot be judged.
    assert "mean judge score, seen:" in out and "mean judge score, held-out:" in out
    assert "judge n/a  'a cat plays the piano'" in out
    assert "wrote 6 files" in out
