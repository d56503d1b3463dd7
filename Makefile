# Two commands for a newcomer: `make demo` and `make test`. Each sets the environment up first
# when it is missing or older than its inputs.
.PHONY: setup test test-fast demo demo-quick bench lint clean

SETUP_INPUTS := scripts/setup.sh requirements.txt setup.py setup.cfg package.xml \
	$(wildcard interfaces/*/msg/*.msg interfaces/*/CMakeLists.txt interfaces/*/package.xml)
READY := .venv/.lightmer-ready

$(READY): $(SETUP_INPUTS)
	bash scripts/setup.sh

setup: $(READY)

test: $(READY)
	bash scripts/test.sh $(PYTEST_ARGS)

# The inner loop: every package, no node processes and no training runs (<= 3 minutes).
test-fast: $(READY)
	bash scripts/test.sh -m 'not slow' $(PYTEST_ARGS)

demo: $(READY)
	bash scripts/loopback.sh .venv/bin/lightmer demo --out demo-out

demo-quick: $(READY)
	bash scripts/loopback.sh .venv/bin/lightmer demo --quick --out demo-out

bench: $(READY)
	bash scripts/loopback.sh .venv/bin/lightmer bench --out demo-out/bench

lint: $(READY)
	.venv/bin/ruff check src test launch scripts

clean:
	rm -rf build demo-out .pytest_cache
