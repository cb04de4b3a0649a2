# pdfnet-pipeline: depth -> train -> eval, chained through file targets so a stage reruns only
# when its inputs changed. Variables:
#   DATA     DIS-5K-layout root (DIS-TR, DIS-VD, DIS-TE1..4 with im/+gt/); default: generated sample
#   STORES   folder of the per-split Zarr stores (default: stores/PROFILE, sizes differ by profile)
#   RUNS     folder of training runs
#   PROFILE  stage profile: smoke (tiny random-weight models, CPU: tests), demo (the same models
#            with a recipe that learns in minutes), paper, finetune (make finetune's default)
#   RUN      run name (default: PROFILE)                  SET   extra --set overrides for every stage
#   INIT     make finetune: the model to start from (reference .pth, .safetensors, folder, Hub id)
#   TORCH    torch spec for `make setup` (GPU users: your own CUDA build, e.g. TORCH=torch)
PYTHON  ?= python3
VENV    ?= .venv
BIN      = $(VENV)/bin
CLI      = $(BIN)/pdfnet-pipeline
TORCH   ?= torch==2.14.1 torchvision==0.29.1

SAMPLE  ?= sample_data
DATA    ?= $(SAMPLE)
STORES  ?= stores/$(PROFILE)
RUNS    ?= runs
PROFILE ?= smoke
RUN     ?= $(PROFILE)
SET     ?=
MANIFEST ?= data_manifests/$(notdir $(abspath $(DATA))).jsonl
# e.g. --allow-mismatch for a DIS-5K copy that differs from the official lists on purpose
MANIFEST_FLAGS ?=

DEPTH_DONE = $(STORES)/.depth-$(PROFILE).done
TRAIN_DONE = $(RUNS)/$(RUN)/.train.done
EVAL_DONE  = $(RUNS)/$(RUN)/eval/results.md
SETS       = $(foreach s,$(SET),--set $(s))

.PHONY: setup lint test test-fast gpu-check demo finetune depth train eval manifest sample status clean-demo help
.DELETE_ON_ERROR:

help:
	@sed -n '1,10p' Makefile; echo; echo "targets: setup test gpu-check demo finetune depth train eval manifest sample status"

setup: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[test]'
	touch $@

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: setup
	$(BIN)/pytest -q

test-fast: setup
	$(BIN)/pytest -q -m "not slow"

# The demo's generated scenes: 48 to train on, 8 in each held-out split (seeded, same bytes everywhere).
$(SAMPLE)/.done:
	$(CLI) data sample $(SAMPLE) --style demo --train 48 --per-split 8
	touch $@
sample: $(SAMPLE)/.done

# The manifest depends on every file of the dataset (a changed image reruns everything after it).
# Folders too, so a deleted file (its folder's mtime changes) also reruns it; DIS-5K names hold
# spaces, escaped for make.
DATA_FILES = $(if $(filter $(SAMPLE),$(DATA)),$(SAMPLE)/.done,$(shell find $(DATA) \( -type f -o -type d \) 2>/dev/null | sed 's/ /\\ /g'))
$(MANIFEST): $(DATA_FILES)
	$(CLI) data manifest $(DATA) --out $@ $(MANIFEST_FLAGS)
manifest: $(MANIFEST)

$(DEPTH_DONE): $(MANIFEST) stages/depth.toml
	$(CLI) stage run depth --profile $(PROFILE) --set manifest=\"$(MANIFEST)\" --set stores=\"$(STORES)\" $(SETS)
	touch $@
depth: $(DEPTH_DONE)

# The training and validation splits by role (DIS-TR / DIS-VD, or a folder's train / val), read
# from the manifest when the recipe runs (after it is written); no validation split, no validation.
TRAIN_SPLIT = $(shell $(CLI) data splits $(MANIFEST) --role train)
VAL_SPLIT   = $(shell $(CLI) data splits $(MANIFEST) --role val 2>/dev/null)
INIT_SET    = $(if $(INIT),--set init_from=\"$(INIT)\")
$(TRAIN_DONE): $(DEPTH_DONE) stages/train.toml
	$(CLI) stage run train --profile $(PROFILE) --set run_dir=\"$(RUNS)/$(RUN)\" --set resume=true $(INIT_SET) \
	  --set 'data.train_stores=["$(STORES)/$(TRAIN_SPLIT).zarr"]' \
	  --set 'data.val_stores=[$(if $(VAL_SPLIT),"$(STORES)/$(VAL_SPLIT).zarr")]' $(SETS)
	touch $@
train: $(TRAIN_DONE)

$(EVAL_DONE): $(TRAIN_DONE) stages/eval.toml
	$(CLI) stage run eval --profile $(PROFILE) --set manifest=\"$(MANIFEST)\" --set stores=\"$(STORES)\" --set run_dir=\"$(RUNS)/$(RUN)\" $(SETS)
eval: $(EVAL_DONE)
	@echo "results: $(EVAL_DONE) (curves.png, contact_sheet.png and preds/ beside it)"

# The demo recipe (profile demo: tiny models from random weights, a few minutes on 2 CPU cores)
# over the generated scenes, or over any DIS-layout folder with DATA=DIR; outputs under
# out/demo/<data>/. A finished demo prints its table again.
DEMO_OUT = out/demo/$(notdir $(abspath $(DATA)))
demo: setup
	$(MAKE) eval PROFILE=demo DATA=$(DATA) STORES=$(DEMO_OUT)/stores RUNS=$(DEMO_OUT)/runs RUN=demo
	@cat $(DEMO_OUT)/runs/demo/eval/results.md
	@echo "open $(DEMO_OUT)/runs/demo/eval/index.html (training curve, before/after gallery)"

# Fine-tune INIT on a folder of your own images and masks (images/ + masks/, or split folders):
# manifest (seeded train / val / test split; MANIFEST_FLAGS="--val-fraction 0.2" etc.) -> depth ->
# train from INIT (profile finetune; PROFILE=smoke or demo-finetune for the tiny models) -> eval,
# whose before / after table compares INIT with the fine-tuned model on the held-out split.
# Outputs under out/finetune/<data>/ (run finetune-<INIT name>: another INIT is another run).
FT_PROFILE = $(if $(filter command line environment,$(origin PROFILE)),$(PROFILE),finetune)
FT_OUT = out/finetune/$(notdir $(abspath $(DATA)))
FT_RUN = finetune-$(basename $(notdir $(INIT)))
finetune: setup
	@test -n "$(INIT)" || { echo "error: make finetune needs INIT=<model to start from: a reference .pth, a .safetensors file, a save_pretrained folder or a Hub id>"; exit 2; }
	@test "$(DATA)" != "$(SAMPLE)" || { echo "error: make finetune needs DATA=<folder of your images and masks (images/ + masks/)>"; exit 2; }
	$(MAKE) eval PROFILE=$(FT_PROFILE) DATA=$(DATA) INIT=$(INIT) STORES=$(FT_OUT)/stores RUNS=$(FT_OUT)/runs RUN=$(FT_RUN)
	@cat $(FT_OUT)/runs/$(FT_RUN)/eval/results.md
	@echo "open $(FT_OUT)/runs/$(FT_RUN)/eval/index.html (before / after gallery)"

status:
	$(CLI) stage status --stores $(STORES) --runs $(RUNS)

clean-demo:
	rm -rf out/demo $(SAMPLE) data_manifests/$(SAMPLE).jsonl

# The GPU path in one command: gpu-marked tests, depth/model/train/metrics benches, report.md and
# report.json in GPU_OUT (<= 8 min on one H100/H200; without CUDA a tiny dry run on the CPU).
GPU_OUT ?= out/gpu-check
gpu-check: setup
	$(CLI) bench gpu --set out=\"$(GPU_OUT)\"
