import json

from cogvx_mini.bench.vae import main


def test_cpu_bench_runs_every_variant_and_keeps_the_output_shape(tmp_path):
    out = tmp_path / "vae.json"
    main(["--skip-diffusers", "--row-tiles", "--repeats", "1", "--frames", "5", "--height", "32",
          "--width", "32", "--time-slice", "2", "--json", str(out)])  # fmt: skip
    rows = json.loads(out.read_text())
    decodes = [r["impl"] for r in rows if r["work"] == "decode"]
    assert decodes == ["VAE3D whole chunk", "VAE3D streaming time_slice=2", "VAE3D tiled",
                       "VAE3D tiled time_slice=2", "VAE3D row tiles 16x32",
                       "VAE3D row tiles 16x32 time_slice=2"]  # fmt: skip
    assert all(r["shape"] == [1, 3, 5, 32, 32] for r in rows if r["work"] == "decode")
    assert all(r["shape"] == [1, 16, 2, 4, 4] for r in rows if r["work"] == "encode")
