# The two commands: `make demo` (the whole pipeline on the offline defaults) and `make test`.
PY := .venv/bin/python
STAMP := .venv/.vlalign-ready

.PHONY: install demo test bench clean

$(STAMP): scripts/setup.sh scripts/requirements.txt pyproject.toml
	bash scripts/setup.sh
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m vlalign demo --out runs/demo

test: $(STAMP)
	$(PY) -m ruff check src tests bench scripts
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) bench/encode.py
	$(PY) bench/sail_step.py
	$(PY) bench/store_scale.py --clean
	$(PY) bench/uta_step.py --threads 1

clean:
	rm -rf runs stores bench/results
