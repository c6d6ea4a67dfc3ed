# The two commands of the README: `make example` renders the example, `make test` runs the tests.
# Both fetch the pre-trained weights first (once; they are cached in ~/.cache/stylefarm).

CARGO ?= cargo

.PHONY: weights example test load lint graph quality browser images deploy-test

weights:
	$(CARGO) run --quiet --bin stylefarm -- fetch-weights

example: weights
	$(CARGO) run --quiet --bin stylefarm -- render examples/tubingen.jpg examples/starry_night.jpg \
		-o out.png --image-size 256 --num-iterations 100 --init content --report out.json

test: weights
	$(CARGO) test --workspace

# The web monitor in headless Chromium over WebDriver (tests/browser/web_monitor.py; Debian's
# chromium, chromium-driver and python3-selenium): a coordinator with a token and a worker on the
# tiny VGG, from the binaries `make test` built; leaves a screenshot in target/web-monitor.png.
# About 20 s once the binaries are built (17 s measured here).
browser:
	$(CARGO) build --bin stylefarm-coordinator --bin stylefarm-worker
	timeout 180 /usr/bin/python3 tests/browser/web_monitor.py

# The load test (tests/tests/load.rs), one run at a time, with its figures (jobs/s, submit
# latency, the coordinator's peak RSS): 20 clients submit 200 jobs to 4 fake workers and a
# coordinator process, and the same with workers killed and restarted at random (the soak).
load:
	$(CARGO) build --bin stylefarm-coordinator
	$(CARGO) test -p stylefarm-tests --test load -- --test-threads=1 --nocapture

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# The crate graph of docs/ARCHITECTURE.md: each crate builds alone, the thin CLI builds, and
# the coordinator and the wire format have no candle or engine in their trees.
graph:
	CARGO=$(CARGO) bash .ci/crate-graph

# Side-by-side with the PyTorch baseline (needs `pip install torch onnx pillow`).
quality:
	$(CARGO) build --bin stylefarm
	bash bench/quality.sh

# Container images built on this machine, nothing pulled (deploy/docker/build-images.sh).
images:
	bash deploy/docker/build-images.sh

# The deploy files: the Kubernetes manifests rendered and validated offline, then the compose
# farm of 3 workers under faults (kill, partition, coordinator restart, scaling).
deploy-test:
	bash deploy/k8s/validate.sh
	bash deploy/test-compose.sh
