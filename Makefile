# palomar: `make test` installs what it needs (Debian packages, a venv) and runs the whole suite.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: test test-cassandra-outage lint deps system-deps cassandra-deps clean demo chaos soak bench bench-quick

deps: system-deps cassandra-deps $(VENV)/.installed

system-deps:
	./scripts/install-system-deps

# Apache Cassandra's jars from Maven Central, for the GeoDB's Cassandra tests (cached; a no-op once fetched).
cassandra-deps: system-deps
	./scripts/cassandra fetch

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

lint: deps
	$(VENV)/bin/ruff check src tests bench

test: deps lint
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# GeoDB outages on a three-node, two-datacenter Cassandra inside network namespaces of its own
# (needs root for `ip netns`), then two sites with a datacenter each on it, and the two-site demo on
# Cassandra in a namespace of its own: about 7 minutes. `make test` leaves these out (marker cassandra_outage).
test-cassandra-outage: deps
	$(VENV)/bin/pytest -m cassandra_outage tests/integration/cassandra_outage $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .ruff_cache

DEMO_DIR ?= demo-run
GEODB    ?= sqlite

SITES    ?= 1

# make demo GEODB=cassandra: the GeoDB on a local Cassandra node (scripts/cassandra, stopped on Ctrl-C).
# make demo SITES=2 [GEODB=cassandra]: two sites (with Cassandra: a node, and a datacenter, per site).
demo: deps
	rm -rf $(DEMO_DIR)
	$(VENV)/bin/palomar demo --dir $(DEMO_DIR) --geodb $(GEODB) --sites $(SITES)

# The chaos suite: faults from a seeded schedule under mixed load for CHAOS_SECONDS, then the mail
# store is counted against every answer; writes docs/reliability.md, fails on any broken promise.
# `make test` runs its bounded variant (tests/chaos, one fault of every kind).
CHAOS_SEED    ?= 1
CHAOS_SECONDS ?= 600

chaos: deps
	$(PY) bench/chaos.py --seed $(CHAOS_SEED) --seconds $(CHAOS_SECONDS)

# The soak: 10,000 idle IMAP and IMAPS sessions plus a login churn for SOAK_SECONDS; memory and open
# descriptors of every server sampled; fails on growth after the warm-up or any error. Writes the
# "Soak (issue 16)" section of docs/benchmarks.md.
SOAK_SECONDS ?= 600

soak: deps
	$(PY) bench/soak.py --seconds $(SOAK_SECONDS)

# Side-by-side benchmarks (bench/README.md): LMTP delivery (palomar, Dovecot CE's LMTP proxy, direct) and
# the IMAP path (palomar, Dovecot CE's proxy, nginx's mail proxy, direct Dovecot; logins, small commands,
# idle memory, large FETCH), written to docs/benchmarks.md. LMTP runs first: the IMAP section's issue-11
# summary table takes its LMTP figures from the LMTP section. Needs root.
# The IMAP run is made twice: with the default hop and with `cluster_backend_path = direct` (its own section).
# `make bench-quick`: the same rows with shorter runs and fewer idle sessions (about 8 minutes).
bench: deps
	$(PY) bench/lmtp_bench.py
	$(PY) bench/imap_bench.py
	$(PY) bench/imap_bench.py --backend-path direct

bench-quick: deps
	$(PY) bench/lmtp_bench.py --seconds 3
	$(PY) bench/imap_bench.py --quick
	$(PY) bench/imap_bench.py --quick --backend-path direct
