# README command one: `make demo`. Command two: `make test`. Everything else follows from `setup`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo demo-tiny serve test test-fast lint clean bench bench-aggregation bench-quality bench-quality-wire bench-quality-seeds bench-quality-merges bench-overhead \
	bench-communication bench-scale bench-downloads bench-faults bench-languages compose-check

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed (flwr 1.42)")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

demo: setup
	$(PY) manage.py demo

demo-tiny: setup
	$(PY) manage.py demo --tiny

serve: setup
	$(PY) manage.py serve

test: setup
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

test-fast: setup
	$(PY) -m pytest -m "not integration"

# Benchmarks: each prints its table and rewrites its own section of docs/benchmarks.md (each < 30 min on 2 cores).
bench: bench-quality bench-overhead bench-communication bench-scale bench-downloads

# Federated vs each contributor alone vs pooled data, same optimizer steps (SmolLM2-135M).
bench-quality: setup
	$(PY) -m bench.quality

# Plain FedAvg with the adapter in float32, float16 and bfloat16 on the wire: what half the bytes cost in quality.
bench-quality-wire: setup
	$(PY) -m bench.quality --wire

# bench-quality's deciding arms (contributors alone, pooled, the default campaign) at seeds 0, 1 and 2: the spread.
bench-quality-seeds: setup
	$(PY) -m bench.quality_seeds

# The default campaign's rounds with other merge rules (TIES, FedExP), emulated in one process beside the real
# default campaign, which checks the emulation (~12 min; not in `make bench`).
bench-quality-merges: setup
	$(PY) -m bench.quality_merges

# Many languages, one model: base vs each region's community alone vs pooled vs the federated default campaign,
# per-language chrF and loss on Django's gettext catalogs (SmolLM2-135M; not in `make bench`).
bench-languages: setup
	$(PY) -m bench.languages

# One round through the whole platform vs the same steps in a bare PEFT loop, and where the difference goes.
bench-overhead: setup
	$(PY) -m bench.overhead

# Bytes on the wire per node per round vs the adapter's tensor bytes.
bench-communication: setup
	$(PY) -m bench.communication

# One round with 10, 50 and 100 real SuperNodes (tiny model): round time, memory, where it breaks.
bench-scale: setup
	$(PY) -m bench.scale

# Release downloads (site and HF API) vs a plain file copy; 200 concurrent downloads.
bench-downloads: setup
	$(PY) -m bench.downloads

# The real demo campaign 5 times under two busy loops, then once with a SuperNode and the SuperLink killed mid-round:
# completed?, rounds, attempts, orphans (~60 min on 2 cores; not in `make bench`, which would double its time).
bench-faults: setup
	$(PY) -m bench.faults

# Robust strategies vs a hostile node, and DP's cost, on 4 real nodes and the tiny model (~20 min on 2 cores).
bench-aggregation: setup
	$(PY) -m bench.aggregation

# docker/compose.yaml for real: images built without a registry (debootstrap + podman import), the stack up under
# podman-compose, a 1-round campaign with 2 nodes joining from this host, everything torn down (root; 7-14 min the
# first time on 2 busy cores, mostly the image build, then 1-2.5 min; not in `make test`).
compose-check: setup
	PYTHON=$(abspath $(PY)) bash docker/compose-check.sh

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf var/demo var/serve var/data var/test.sqlite3
