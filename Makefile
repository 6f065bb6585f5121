# One command sets up and runs the main job (`make demo`); one sets up and runs the tests
# (`make test`). Setup creates .venv and installs with pip; it is redone when pyproject changes.
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
DEMO_DIR ?= runs/demo

.PHONY: setup browser demo baseline test test-fast lint bench pretrain clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch/torchvision lie on this machine's disk; pip takes them from there
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

# The Serve page test drives Debian's chromium with playwright (playwright's own browser download
# cannot work offline). Installed when missing and apt-get can (root); else that test is skipped.
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
	  >/dev/null 2>&1; } || echo "chromium could not be installed: the page test will skip" >&2

# FIND on 8 shapes prompts through the Ray actor-learner system (a local Ray is started),
# then base vs trained policy on the same noise: report (gains with CIs, image quality, the
# shell), grids, TensorBoard. configs/find-shapes.yaml at DDIM 10 with 12 rollouts per prompt
# and iteration, so that a fresh clone runs it in under 10 minutes, setup included.
DEMO_ARGS ?= model.steps=10 train.samples_per_prompt=12 eval.samples_per_prompt=24
demo: setup
	$(BIN)/find-ray train --config configs/find-shapes.yaml train.out_dir=$(DEMO_DIR) $(DEMO_ARGS)
	@echo "demo report: $(DEMO_DIR)/report.md (grids: $(DEMO_DIR)/before_after.png)"

baseline: setup
	$(BIN)/find-ray eval --config configs/shapes.yaml eval.out_dir=runs/baseline

# pytest exits 5 when it collects no test: that is a failure here, not a pass.
define pytest_or_fail
	$(BIN)/pytest -q $(1); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc
endef

test: setup browser
	$(BIN)/ruff check find_ray tests benchmarks
	$(call pytest_or_fail,)
	BIN=$(BIN) scripts/job_submit_check.sh

# The fast tier: everything but the end-to-end tests (`slow`: Ray, long training or sampling).
test-fast: setup
	$(BIN)/ruff check find_ray tests benchmarks
	$(call pytest_or_fail,-m "not slow")

lint: setup
	$(BIN)/ruff check find_ray tests benchmarks
	$(BIN)/ruff format --check find_ray tests benchmarks

bench: setup
	$(PY) benchmarks/sampling.py
	$(PY) benchmarks/scale.py --iterations 15 --repeats 1

pretrain: setup
	$(BIN)/find-ray pretrain-shapes

clean:
	rm -rf $(VENV) runs
