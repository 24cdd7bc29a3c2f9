# One command each for a fresh machine: `make demo` runs the product on the
# shipped demo clip, `make test` runs the whole test suite. Both set up
# everything they need first (a .venv, and Debian packages when root).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The CPU build on this machine's disk; a GPU user sets TORCH_SPEC to the
# CUDA build they want (`make TORCH_SPEC="torch==2.13.0 --index-url ..."`).
TORCH_SPEC ?= torch==2.13.0
STAMP  := $(VENV)/.installed
APT_PKGS := obs-studio xvfb xdotool imagemagick chromium chromium-driver fonts-noto-color-emoji libportaudio2

.PHONY: setup system-deps demo test test-fast wheel-check screenshots bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check "$(TORCH_SPEC)"
	$(BIN)/pip install -q --disable-pip-version-check -e ".[test]"
	touch $(STAMP)

# Real OBS, Xvfb and Chromium for the integration tests. Installed only when
# we are root (CI, containers); otherwise those tests skip and say why.
system-deps:
	@if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
	  missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  fi; \
	else echo "not root: skipping Debian packages ($(APT_PKGS)); tests that need them will skip"; fi

demo: $(STAMP)
	$(BIN)/merlb demo

# The suite's wall time is printed at the end (it should stay under 15 minutes
# on the 2-core reference machine); pytest's exit status is make's.
test: $(STAMP) system-deps wheel-check
	@start=$$(date +%s); \
	QT_QPA_PLATFORM=offscreen OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -ra; rc=$$?; \
	s=$$(( $$(date +%s) - start )); echo "make test: wall time $$((s / 60)) min $$((s % 60)) s"; exit $$rc

test-fast: $(STAMP)
	QT_QPA_PLATFORM=offscreen OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -m "not obs and not browser and not slow"

# The package as a user installs it: the wheel in a fresh venv outside the
# checkout with the pinned torch, run from another folder: `merlb demo`,
# `merlb live` on the packaged clip, and `merlb install-obs --dry-run` on OBS
# config folders laid out as on Windows, macOS and Linux (.ci/wheel-check).
# Part of `make test`; pip's cache keeps the install to a minute or two.
wheel-check:
	PYTHON="$(PYTHON)" TORCH_SPEC="$(TORCH_SPEC)" bash .ci/wheel-check

# The README's pictures in docs/img, re-taken on purpose from the tests that
# draw them (the panel, the overlay themes, the OBS script's properties); a
# plain test run writes its screenshots to temporary folders and leaves the
# tree clean. Look at `git diff --stat docs/img` and the skips it lists.
SCREENSHOT_TESTS := tests/test_panel.py::test_panel_shows_live_values_that_change \
	tests/test_overlay_browser.py::test_theme_screenshot \
	tests/test_overlay_browser.py::test_settings_page_builds_form_and_url \
	tests/test_obs.py::test_engine_properties_screenshot \
	tests/test_triggers_panel.py::test_triggers_tab_lists_edits_saves_and_tests

screenshots: $(STAMP) system-deps
	MERLB_SCREENSHOTS=docs/img QT_QPA_PLATFORM=offscreen OMP_NUM_THREADS=1 \
	  $(BIN)/python -m pytest -q -ra $(SCREENSHOT_TESTS)

bench: $(STAMP)
	$(BIN)/merlb bench

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
