# Two entry points for a fresh clone: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
# The torch builds this machine has as local wheels; override on other machines.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
DEMO_DATA ?= data/synth
DEMO_IMAGES ?= 1200

REFERENCE ?= results/reference/goyal2019-mini.csv

.PHONY: demo test test-fast docs venv clean-demo regression-check reference detectron2

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

$(DEMO_DATA)/VOCdevkit/VOC2007/ImageSets/Main/test.txt: | $(VENV)/.installed
	$(VENV)/bin/ssl-bench data synth voc07 --out $(DEMO_DATA) --images $(DEMO_IMAGES) --seed 0

$(DEMO_DATA)/Places205/trainvalsplit_places205/val_places205.csv: | $(VENV)/.installed
	$(VENV)/bin/ssl-bench data synth places205 --out $(DEMO_DATA) --classes 20 --per-class 30 --seed 0

$(DEMO_DATA)/NYUv2/splits.mat: | $(VENV)/.installed
	$(VENV)/bin/ssl-bench data synth nyuv2 --out $(DEMO_DATA) --seed 0

# knn, logreg and linear_probe of the mini suite: 10 shape classes, 40 train + 13 test images each
$(DEMO_DATA)/synth-classification/test: | $(VENV)/.installed
	$(VENV)/bin/ssl-bench data synth classification --out $(DEMO_DATA) --classes 10 --per-class 40 --seed 0

# three of the twelve transfer datasets in their official layouts, 3 classes x (30 train + 15 val + 15 test);
# each rule's target is the last file its generator writes
DEMO_TRANSFER := $(DEMO_DATA)/cifar10/cifar-10-batches-py/batches.meta $(DEMO_DATA)/flowers102/flowers-102/setid.mat \
	$(DEMO_DATA)/voc2007/VOCdevkit/VOC2007/ImageSets/Main/test.txt
$(DEMO_DATA)/cifar10/cifar-10-batches-py/batches.meta: | $(VENV)/.installed
	$(VENV)/bin/ssl-bench data synth transfer --dataset cifar10 --out $(DEMO_DATA) --per-class 30 --seed 0
$(DEMO_DATA)/flowers102/flowers-102/setid.mat: | $(VENV)/.installed
	$(VENV)/bin/ssl-bench data synth transfer --dataset flowers102 --out $(DEMO_DATA) --per-class 30 --seed 0
$(DEMO_DATA)/voc2007/VOCdevkit/VOC2007/ImageSets/Main/test.txt: | $(VENV)/.installed
	$(VENV)/bin/ssl-bench data synth transfer --dataset voc2007 --out $(DEMO_DATA) --per-class 30 --seed 0

demo: $(VENV)/.installed $(DEMO_DATA)/VOCdevkit/VOC2007/ImageSets/Main/test.txt $(DEMO_DATA)/Places205/trainvalsplit_places205/val_places205.csv $(DEMO_DATA)/NYUv2/splits.mat $(DEMO_DATA)/synth-classification/test $(DEMO_TRANSFER)
	$(VENV)/bin/ssl-bench run --suite goyal2019-mini --data-root $(DEMO_DATA)
	@echo "Leaderboard: runs/goyal2019-mini/leaderboard.md (also .csv and .png)"
	@echo "Report: $(abspath runs/goyal2019-mini/report.html) (open it in a browser; self-contained)"

# The optional detectron2 backend: detectron2 0.6 built from its PyPI sdist (sha256-pinned) with
# the build-time changes of tools/build_detectron2.py, as a pure-Python wheel cached in
# $(WHEELHOUSE) (outside the clone: later clones and venvs install it in seconds). Where GitHub is
# reachable, upstream works too: pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git'
WHEELHOUSE ?= $(or $(SSL_BENCH_WHEELHOUSE),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/ssl-bench/wheelhouse)
detectron2: $(VENV)/.installed
	$(PY) tools/build_detectron2.py --wheelhouse $(WHEELHOUSE)

# two pytest workers (pytest-xdist), a test file per worker so that module fixtures are built once;
# the slowest tests are listed at the end
PYTEST_WORKERS ?= 2
test: $(VENV)/.installed
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile --durations=30

test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile -m "not slow" --durations=10

# the documentation site (mkdocs.yml, docs/); --strict: a broken link or missing page is an error.
# tests/test_docs.py builds it too, so `make test` (and CI) fails on a broken page
docs: $(VENV)/.installed
	$(VENV)/bin/mkdocs build --strict --site-dir site

# CI: the mini suite from scratch, then its numbers against the stored reference; the demo tests
# check the report's cells against the rows, and that a 3-point move of any guarded headline fails
regression-check: demo
	$(VENV)/bin/ssl-bench check runs/goyal2019-mini --against $(REFERENCE)
	SSL_BENCH_DEMO_RUN=runs/goyal2019-mini $(PY) -m pytest -q tests/test_demo_report.py tests/test_demo_check.py

# Deliberate, not part of CI: rebuild the reference after a change that moves numbers, with the
# spread of every trained number measured over replicate runs (each reseeds every SGD training)
REPLICATES ?= 1 2 3
reference: demo
	for n in $(REPLICATES); do \
		$(VENV)/bin/ssl-bench run --suite goyal2019-mini --data-root $(DEMO_DATA) --replicate $$n || exit 1; done
	$(VENV)/bin/ssl-bench check runs/goyal2019-mini --against $(REFERENCE) --update \
		--replicates $(patsubst %,runs/goyal2019-mini.replicate%,$(REPLICATES))

clean-demo:
	rm -rf runs/goyal2019-mini runs/feature-cache $(DEMO_DATA)
