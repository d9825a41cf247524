# Every target sets itself up: a fresh machine needs only python3, pip and node.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OUT ?= outputs

.PHONY: demo test lint pytest chapters notebooks book-check book browser-test lab train train-gpu \
	ablations curation lora-concept clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[book,test,interop,quantize]'
	# Jupyter refuses to start as root (CI runs as root); the book's executor needs it.
	mkdir -p $(VENV)/etc/jupyter
	echo '{"ServerApp": {"allow_root": true}}' > $(VENV)/etc/jupyter/jupyter_server_config.json
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m cogvx_mini.demo --out $(OUT)/demo

# Train the small CPU model (TransformerConfig.mini(), 4 layers of width 128) on the laptop world
# (one large red, green or blue object per scene, 13-frame clips): what two laptop cores learn
# in about 14 minutes. Writes $(OUT)/train and judges the model on 64 unseen prompts of that
# world, beside the chance level; the shipped full-world model is left alone (make train-gpu
# replaces it). Ctrl-C saves a checkpoint; the same command resumes. The recipe:
# RECIPES["laptop"] in training/train.py, chosen by tools/laptop_sweep.py.
train: $(STAMP)
	$(BIN)/python -m cogvx_mini.training.train --out $(OUT)/train --device $(DEVICE) \
		--recipe laptop $(TRAIN_ARGS)

# The recipe of the shipped weights (one GPU, about 42 minutes on an H200), VAE first, then the
# transformer on its latents in two stages, then its image-to-video variant; all overwrite
# cogvx_mini/weights/assets/:
# - the VAE: batch 32 (64x64 crops of 17-frame clips, each clip one chunk in time) on a 3,300-step
#   cosine schedule from lr 1.5e-3, stopped after 7 minutes (the shipped file: step 2,495), wider
#   at the lower resolutions than VAEConfig.mini();
# - the transformer: 8 layers, 256 wide, on 40,000 clips, 5,900 steps of batch 512 at lr 1.5e-3
#   (cosine to 1.5e-4): 11.5 minutes of training (13.8 with the latent cache) on the H200; then
#   4,000 more steps from its EMA weights at lr 5e-4 (cosine to 5e-5), 9.3 minutes (12.1).
GPU_VAE := --device cuda --threads 8 --batch 32 --crop 64 --size 64 --pool 4096 --lr 1.5e-3 \
	--warmup 100 --kl-weight 1e-3 --steps 3300 --lr-decay cosine --min-lr-ratio 0.02 \
	--save-every 1000 --eval-videos 32 --max-minutes 7.0 \
	--model block_out_channels=[16,48,64,96] encode_chunk_frames=16 decode_chunk_latents=8
GPU_TRANSFORMER := --device cuda --clips 40000 --batch-size 512 --threads 8 --steps 5900 --lr 1.5e-3 \
	--model num_layers=8 num_heads=8
GPU_FINETUNE := --device cuda --clips 40000 --batch-size 512 --threads 8 --steps 4000 --lr 5e-4
# - the image-to-video model: the shipped transformer widened (zero weights for the image's
#   channels) and trained 2,000 steps of batch 512 at lr 5e-4 on 16,000 clips with their first
#   frames, 5 minutes (8.4 with the cache and the judge); book/data/train_i2v.json.
GPU_I2V := --device cuda --clips 16000 --batch-size 512 --threads 8 --steps 2000 --lr 5e-4
train-gpu: $(STAMP)
	$(BIN)/python -m cogvx_mini.training.vae_train --out $(OUT)/vae $(GPU_VAE)
	cp $(OUT)/vae/vae_mini.safetensors cogvx_mini/weights/assets/vae_mini.safetensors
	$(BIN)/python -m cogvx_mini.training.train --out $(OUT)/transformer $(GPU_TRANSFORMER) \
		--vae-weights $(OUT)/vae/vae_mini.safetensors
	$(BIN)/python -m cogvx_mini.training.train --out $(OUT)/transformer-finetune $(GPU_FINETUNE) \
		--init-from $(OUT)/transformer/transformer_mini.safetensors \
		--vae-weights $(OUT)/vae/vae_mini.safetensors --ship
	$(BIN)/python -m cogvx_mini.training.i2v --out $(OUT)/i2v $(GPU_I2V) \
		--vae-weights $(OUT)/vae/vae_mini.safetensors --ship

# book executes every page once and makes every check of book-check while it writes the HTML
# site, which browser-test then opens page by page in headless Chromium.
test: $(STAMP) lint pytest chapters book browser-test

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

pytest: $(STAMP)
	$(BIN)/pytest -q tests

# nbval re-executes every chapter; only cells marked NBVAL_CHECK_OUTPUT are compared.
chapters: $(STAMP)
	$(BIN)/python tools/notebooks.py check
	$(BIN)/pytest -q --nbval-lax --nbval-sanitize-with tools/nbval_sanitize.cfg -p no:cacheprovider chapters/*.ipynb

# Re-run the chapters and store the outputs that nbval compares (after editing a chapter).
notebooks: $(STAMP)
	$(BIN)/python tools/notebooks.py sync

# Offline part of the book: every page parsed and executed, every reference resolved.
book-check: $(STAMP)
	$(BIN)/python tools/check_book.py

# The HTML site in _build/html, complete offline: the book theme from ../shared/book-theme or
# BOOK_THEME_DIR (BOOK_THEME_DIR=download: Jupyter Book downloads it), KaTeX and Font Awesome
# from the npm registry (tools/book_assets). Also every check of book-check.
book: $(STAMP)
	$(BIN)/python tools/check_book.py --html

# Every page of _build/html in headless Chromium (Debian's, installed below when missing):
# fails on anything broken a reader would see; screenshots in _build/screenshots.
CHROMIUM := /usr/bin/chromium
browser-test: $(STAMP) $(CHROMIUM)
	$(BIN)/python tools/browser_test.py

$(CHROMIUM):
	@test "$$(id -u)" = 0 || { echo "no $(CHROMIUM): run sudo apt-get install -y chromium"; exit 1; }
	apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium

lab: $(STAMP)
	$(BIN)/jupyter lab chapters

# The paper's ablations in miniature (chapter 10): JSON + PNG under book/ablations/.
# On a GPU: make ablations BUDGET=full DEVICE=cuda PARALLEL=3 (each seed in its own process:
# one mini training is bound by its host, so one GPU runs several at once).
BUDGET ?= small
DEVICE ?= cpu
PARALLEL ?= 1
ablations: $(STAMP)
	$(BIN)/python -m cogvx_mini.experiments all --budget $(BUDGET) --device $(DEVICE) \
		--parallel $(PARALLEL) --out book/ablations

# The data pipeline in miniature (chapter 11): book/data/curation.json + PNGs. The CPU budget
# takes minutes on one thread; on a GPU: make curation CURATION_BUDGET=gpu DEVICE=cuda
CURATION_BUDGET ?= cpu
curation: $(STAMP)
	$(BIN)/python -m cogvx_mini.curation_experiment --budget $(CURATION_BUDGET) --device $(DEVICE) --out book/data

# Chapter 9's LoRA fine-tune: the shipped mini model taught a diamond (a shape outside its
# world) on two CPU threads, judged before and after: book/data/lora_concept.json, and the
# same on diamonds only (no prior preservation): book/data/lora_concept_no_prior.json.
lora-concept: $(STAMP)
	$(BIN)/python -m cogvx_mini.training.concept --json book/data/lora_concept.json
	$(BIN)/python -m cogvx_mini.training.concept --new-shape-share 1 --after-only \
		--json book/data/lora_concept_no_prior.json

clean:
	rm -rf _build $(OUT) .pytest_cache
