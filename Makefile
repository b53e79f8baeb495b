# lazydrift: every target installs into .venv first when needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# MNIST for the offline targets: the IDX files shipped beside the checkout when present
# (../shared/data/MNIST/raw), else data/ (add --download to fetch them there).
export LAZYDRIFT_MNIST_ROOT ?= $(firstword $(wildcard $(abspath ../shared/data)))

.PHONY: install demo test test-fast test-numerics reproduce-table1 reproduce-table1-protocols reproduce-prop4 reproduce-table2 reproduce-scaling figures bench bench-quick clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m lazydrift run recipes/table1-quick.toml

test: $(STAMP)
	$(PY) -m pytest -q

# The edit loop: everything but the end-to-end tier (tests marked slow).
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# The fast tier again under a second numerical environment: one thread and MKL's reproducible
# (CNR) code path, so a test that holds only for one CPU's BLAS rounding fails here, not on
# a user's machine.  CI runs it after `make test`.
test-numerics: $(STAMP)
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 MKL_CBWR=COMPATIBLE $(PY) -m pytest -q -m "not slow" -p no:cacheprovider

reproduce-table1: $(STAMP)
	$(PY) -m lazydrift run recipes/table1.toml --download

# The Table-1 protocol study (issue 13; README "Table 1"): 5 candidate protocols x 3 seeds x widths
# 512-4096 x V = 2000 and 200, 300 steps -> results/table1-protocols/protocols.md.  Two single-thread
# processes, each running one shard of each recipe, crossed: the V = 2000 shard holding the widest
# cells (round robin deals widths 1024 and 4096 to shard 1) goes with the V = 200 shard holding
# the narrow ones (measured from a clean clone: 40.5 minutes on 2 nearly idle cores).
PROTOCOLS_A := results/table1-protocols
PROTOCOLS_B := results/table1-protocols-v200
reproduce-table1-protocols: $(STAMP)
	export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1; \
	( $(PY) -m lazydrift run recipes/table1-protocols.toml --out $(PROTOCOLS_A) --shard 1/2 --quiet && \
	  $(PY) -m lazydrift run recipes/table1-protocols-v200.toml --out $(PROTOCOLS_B) --shard 0/2 --quiet ) & a=$$!; \
	( $(PY) -m lazydrift run recipes/table1-protocols.toml --out $(PROTOCOLS_A) --shard 0/2 --quiet && \
	  $(PY) -m lazydrift run recipes/table1-protocols-v200.toml --out $(PROTOCOLS_B) --shard 1/2 --quiet ) & b=$$!; \
	wait $$a && wait $$b
	$(PY) -m lazydrift merge $(PROTOCOLS_A)
	$(PY) -m lazydrift merge $(PROTOCOLS_B)
	$(PY) -m lazydrift.protocols $(PROTOCOLS_A) $(PROTOCOLS_B) --out $(PROTOCOLS_A)/protocols.md
	cat $(PROTOCOLS_A)/protocols.md

# Proposition 4 is about the lazy regime: the NTK control (SGD, NTK parameterization, Euclidean loss).
reproduce-prop4: $(STAMP)
	$(PY) -m lazydrift run recipes/prop4-text8-quick.toml --quiet
	$(PY) -m lazydrift run recipes/mnist-drift-quick.toml --quiet
	$(PY) -m lazydrift plot results/prop4-text8-quick
	$(PY) -m lazydrift plot results/mnist-drift-quick

# Width sweeps, ntk vs muP vs standard (CPU scale, ~3 min on 2 idle cores): scaling.csv/.md/.png,
# scaling_slopes.png, and the word-analogy table analogy.md.  GPU scale: recipes/scaling.toml.
reproduce-scaling: $(STAMP)
	$(PY) -m lazydrift run recipes/scaling-quick.toml --quiet
	$(PY) -m lazydrift run recipes/analogies-quick.toml --quiet
	cat results/scaling-quick/scaling.md results/analogies-quick/analogy.md

reproduce-table2: $(STAMP)
	$(PY) -m lazydrift table2 --out results/table2

figures: $(STAMP)
	$(PY) -m lazydrift figures --out results/figures

bench: $(STAMP)
	mkdir -p results/bench
	$(PY) benchmarks/bench_train.py --json results/bench/train.json
	$(PY) benchmarks/bench_kernels.py --json results/bench/kernels.json
	$(PY) benchmarks/bench_ntk.py --json results/bench/ntk.json
	$(PY) benchmarks/bench_optimizers.py --json results/bench/optimizers.json
	$(PY) benchmarks/summary.py results/bench/train.json results/bench/kernels.json results/bench/ntk.json results/bench/optimizers.json

bench-quick: $(STAMP)
	mkdir -p results/bench
	$(PY) benchmarks/bench_train.py --quick --json results/bench/train-quick.json
	$(PY) benchmarks/bench_kernels.py --quick --json results/bench/kernels-quick.json
	$(PY) benchmarks/bench_ntk.py --quick --json results/bench/ntk-quick.json
	$(PY) benchmarks/bench_optimizers.py --quick --json results/bench/optimizers-quick.json
	$(PY) benchmarks/summary.py results/bench/train-quick.json results/bench/kernels-quick.json results/bench/ntk-quick.json results/bench/optimizers-quick.json

clean:
	rm -rf results .pytest_cache
