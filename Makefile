# Two commands for a newcomer: `make run` (the daemon on demo photos) and `make test`.
# Both set up .venv and fetch the model first; nothing is installed outside this directory.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Fetched models and demo photos live in the checkout, not in the user's home.
export EDGEPOSE_MODEL_DIR ?= $(CURDIR)/.cache/models
# A local mirror of the upstream files, used when present (CI and offline machines); else download.
SHARED_DIR ?= $(abspath $(CURDIR)/../shared)
ifneq ($(wildcard $(SHARED_DIR)/models),)
export EDGEPOSE_MODEL_MIRROR ?= $(SHARED_DIR)/models:$(SHARED_DIR)/testdata/pose
endif

MQTT_PORT ?= 1883
WEB_LISTEN ?= 127.0.0.1:8080
MODELS := movenet_lightning_int8 movenet_lightning_int8_edgetpu samples

.PHONY: run test venv models lint typecheck pytest test-nspawn mutants bench bench-runtimes bench-smoke test-outages pose-quality bench-fleet bench-payloads test-cluster test-ha clean

# The `systemd` extra (systemd-python, what the Pi install uses) builds from source: it needs gcc,
# pkg-config and libsystemd-dev. Without them the venv gets `.[dev]` only and its tests skip
# (CI installs them and sets EDGEPOSE_REQUIRE_SYSTEMD_PYTHON=1, so there they cannot skip).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,eval,systemd]' || { \
		echo "systemd-python did not build (needs gcc, pkg-config, libsystemd-dev): installing without it" >&2; \
		$(BIN)/pip install --quiet -e '.[dev,eval]'; }
	@touch $@

venv: $(STAMP)

models: $(STAMP)
	$(BIN)/edgepose models fetch $(MODELS)

run: models
	MQTT_PORT=$(MQTT_PORT) WEB_LISTEN=$(WEB_LISTEN) EDGEPOSE=$(BIN)/edgepose EDGEPOSE_PYTHON=$(BIN)/python scripts/run_demo.sh

lint: $(STAMP)
	$(BIN)/ruff check edgepose tests bench scripts
	$(BIN)/ruff format --check edgepose tests bench scripts

typecheck: $(STAMP)
	$(BIN)/mypy edgepose

pytest: models
	$(BIN)/python -m pytest -q

test: lint typecheck pytest

# The real-systemd install test alone (root, systemd-nspawn; about 2 min). CI runs it inside `make test`.
test-nspawn: models
	EDGEPOSE_TEST_NSPAWN=1 $(BIN)/python -m pytest -q -m slow tests/test_installer.py -k real_install

# Mutation testing of the pure modules, one module at a time (docs/testing.md); CPU heavy, opt-in.
mutants: models
	$(BIN)/pip install --quiet -e '.[mutation]'
	$(BIN)/python scripts/mutation.py

# The acceptance run of the per-frame CPU issue (#14): Lightning int8, LiteRT, 1 and 2 threads, every
# default on; raw loop, daemon and serial loop side by side. About 5 minutes on a quiet 2-core x86_64
# (bounded: each run times out). Commit bench/results/latest.json under a name saying the machine.
BENCH_FRAMES ?= 10000
BENCH_CONDITIONS ?= not stated (pass BENCH_CONDITIONS="...")
bench: models
	$(BIN)/edgepose bench --threads 1 2 --frames $(BENCH_FRAMES) --paced-fps 30 \
		--conditions "$(BENCH_CONDITIONS)" --json bench/results/latest.json

# LiteRT against tflite-runtime: tflite-runtime 2.14 needs numpy<2, so it gets a venv of its own.
bench-runtimes: models
	test -x .venv-tflite/bin/python || $(PYTHON) -m venv .venv-tflite
	.venv-tflite/bin/pip install --quiet -e '.[tflite]'
	.venv-tflite/bin/edgepose bench --runtime litert --runtime tflite --threads 1 2 --frames 300 \
		--paced-fps 0 --json bench/results/runtimes-latest.json

# The issue's broker outages of 6, 12 and 20 s in a row (about a minute); figures for docs/reliability.md
# (committed copy: bench/results/x86_64-2core-outages-6-12-20.json).
test-outages: models
	EDGEPOSE_OUTAGES=$(CURDIR)/bench/results/outages-latest.json $(BIN)/python -m pytest -q tests/test_reliability.py -k 6_12_20

# The README's "Pose quality" table: every clip of the full set in the daemon's video path, against
# the stills path on the same frames, smart crop off and smoothing off (several minutes on 2 cores);
# then the causes bench (what each fix bought) and the limits bench (what the ideas left would buy).
# The truth CSV comes from the shared test data; the photos are the fetched, checksummed samples.
POSE_TRUTH ?= $(SHARED_DIR)/testdata/pose/pose_landmark_truth.csv
pose-quality: models
	$(BIN)/edgepose eval --truth $(POSE_TRUTH) $(EDGEPOSE_MODEL_DIR)/image1.png $(EDGEPOSE_MODEL_DIR)/image2.jpeg \
		--clips full --compare --markdown > bench/results/pose-quality.md
	$(BIN)/python bench/pose_quality_causes.py --json bench/results/pose-quality-causes.json
	$(BIN)/python bench/pose_quality_limits.py --json bench/results/pose-quality-limits.json

bench-smoke: models
	$(BIN)/python -m pytest -q -m slow tests/test_bench.py

# Fleet capacity (docs/fleet.md): fleet-sim -> one mosquitto -> two consumers in a shared group, for
# 50/200/500/1000 devices x 10/30 fps x json/compact, 8 s each, then the 500 x 10 fps x 20 s target.
# About 6 minutes. Opt-in: it loads the whole machine.
FLEET_OUT ?= bench/results/fleet-latest
bench-fleet: $(STAMP)
	$(BIN)/python bench/fleet.py --json $(FLEET_OUT).json --markdown $(FLEET_OUT).md --label "$(FLEET_LABEL)"

# Keypoints payload formats: json, compact, and compact as MessagePack / CBOR (bench extra).
bench-payloads: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python bench/payload_formats.py --json bench/results/payload-formats-latest.json

# A 3-node RabbitMQ cluster (MQTT plugin) on loopback: what it gives edgepose (retained status and
# Last Will across nodes, QoS 1, shared subscriptions, MQTT 5), then the fleet spread over its nodes
# (docs/fleet.md). Opt-in: about 5 minutes; installs Debian's rabbitmq-server first if it is missing
# (needs root, as CI has; otherwise `sudo apt install rabbitmq-server` once).
CLUSTER_OUT ?= bench/results/cluster-latest
test-cluster: $(STAMP)
	@test -x /usr/sbin/rabbitmq-server || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends rabbitmq-server; }
	$(BIN)/python bench/cluster.py --json $(CLUSTER_OUT).json --markdown $(CLUSTER_OUT).md --label "$(FLEET_LABEL)"

# Opt-in: the Home Assistant discovery payloads through Home Assistant's own schemas and template
# engine. 2024.3 is the last Home Assistant release on Python 3.11; it gets a venv of its own.
test-ha: $(STAMP)
	test -x .venv-ha/bin/python || $(PYTHON) -m venv .venv-ha
	.venv-ha/bin/pip install --quiet 'homeassistant==2024.3.3' 'paho-mqtt==1.6.1' numpy
	EDGEPOSE_HA_PYTHON=$(CURDIR)/.venv-ha/bin/python $(BIN)/python -m pytest -q tests/test_homeassistant.py

clean:
	rm -rf $(VENV) .venv-tflite .venv-ha .cache .mypy_cache .ruff_cache .pytest_cache .mutation
