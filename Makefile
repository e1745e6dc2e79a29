# Set-up and the two jobs of the README. Everything installs into .venv from this
# repository's own files (pyproject.toml + constraints.txt); nothing is downloaded at run time.
VENV ?= .venv
PY := $(VENV)/bin/python
RUN ?= demo-run

.PHONY: demo test bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	# the native kernels now, not on the first eval or training step (backends/pytorch/native.py; warns without a compiler)
	$(PY) -c "from cnas_ir.backends.pytorch import native; native.load()"
	touch $@

# The main job, end to end, on the embedded default (scikit-learn's digits; no download).
# build -> one-shot training -> Taylor search to rho -> CNAS-W fine-tuning -> ONNX -> Table 1.
CNAS := $(VENV)/bin/cnas-ir --run-dir $(RUN)
demo: $(VENV)/.installed
	rm -rf $(RUN)
	$(CNAS) build examples/tiny.yaml
	$(CNAS) train
	$(CNAS) prune
	$(CNAS) train
	$(CNAS) export --onnx --check
	$(CNAS) stats --markdown | tee $(RUN)/table1.md
	$(CNAS) report

test: $(VENV)/.installed
	$(PY) -m pytest

bench: $(VENV)/.installed
	$(PY) benchmarks/bench_core.py

clean:
	rm -rf $(RUN) cnas-run .pytest_cache
