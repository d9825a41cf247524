# Every target sets itself up: a fresh machine needs only python3, pip and node.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OUT ?= outputs

.PHONY: demo test lint pytest chapters notebooks book-check book browser-test lab train train-gpu \
	ablations curation clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[book,test,interop]'
	# Jupyter refuses to start as root (CI runs as root); the book's executor needs it.
	mkdir -p $(VENV)/etc/jupyter
	echo '{"ServerApp": {"allow_root": true}}' > $(VENV)/etc/jupyter/jupyter_server_config.json
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m cogvx_mini.demo --out $(OUT)/demo

# Retrain the mini transformer from scratch on the shipped VAE's latents and overwrite
# cogvx_mini/weights/assets/transformer_mini.safetensors; resumes if interrupted. On the CPU this is
# the small 4-layer model (TransformerConfig.mini(), about 10 minutes on one core).
train: $(STAMP)
	$(BIN)/python -m cogvx_mini.training.train --out $(OUT)/train --device $(DEVICE) --ship $(TRAIN_ARGS)

# The recipe of the shipped weights (one GPU, about 20 minutes on an H200): an 8-layer, 256-wide
# mini transformer trained in three cosine stages, each from the last one's EMA weights:
# 7,200 steps at lr 1e-3, 7,200 at 5e-4, 3,000 at 2.5e-4.
GPU_RECIPE := --device cuda --clips 24000 --batch-size 128 --threads 4
train-gpu: $(STAMP)
	$(BIN)/python -m cogvx_mini.training.train --out $(OUT)/stage1 $(GPU_RECIPE) --steps 7200 --lr 1e-3 \
		--model num_layers=8 num_heads=8
	$(BIN)/python -m cogvx_mini.training.train --out $(OUT)/stage2 $(GPU_RECIPE) --steps 7200 --lr 5e-4 \
		--init-from $(OUT)/stage1/transformer_mini.safetensors
	$(BIN)/python -m cogvx_mini.training.train --out $(OUT)/stage3 $(GPU_RECIPE) --steps 3000 --lr 2.5e-4 \
		--init-from $(OUT)/stage2/transformer_mini.safetensors --ship

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
# On a GPU: make ablations BUDGET=full DEVICE=cuda
BUDGET ?= small
DEVICE ?= cpu
ablations: $(STAMP)
	$(BIN)/python -m cogvx_mini.experiments all --budget $(BUDGET) --device $(DEVICE) --out book/ablations

# The data pipeline in miniature (chapter 11): book/data/curation.json + PNGs. The CPU budget
# takes minutes on one thread; on a GPU: make curation CURATION_BUDGET=gpu DEVICE=cuda
CURATION_BUDGET ?= cpu
curation: $(STAMP)
	$(BIN)/python -m cogvx_mini.curation_experiment --budget $(CURATION_BUDGET) --device $(DEVICE) --out book/data

clean:
	rm -rf _build $(OUT) .pytest_cache
