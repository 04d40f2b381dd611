# Two commands for a newcomer: `make run` and `make test`. Both set up .venv first.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
CONFIG ?= deploy/local/stack.yaml
MODELS := model_repo/claims_risk/1/model.pt model_repo/claims_risk/2/model.pt
# The local stack's HS256 secret: made on this machine, readable by its owner only.
DEV_SECRET := var/dev-hs256.secret
# The local stack's decision-log signing key (checkpoints), outside the log folder.
DEV_SIGNING_KEY := var/audit-signing.pem
COMPILED := build/compiled
# What `make test` runs again on the compiled build: the compiled modules' own tests and
# the end-to-end calls through them (the whole suite passes there too; this keeps CI short).
COMPILED_TESTS := $(addprefix tests/aios/test_,batching.py chain.py compare.py envelope.py \
	grpcjson.py h1server.py h2frames.py h2server.py http1.py ids.py kserve.py merkle.py \
	metrics.py upstream.py worker.py fuzz.py) \
	$(addprefix tests/gateway/test_,auth.py batching.py breaker.py quota.py routing.py \
	sequences.py scheduling.py) \
	$(addprefix tests/sidecar/test_,batching.py drift.py parity.py plane.py records.py \
	redaction.py review.py decisionlog.py) \
	$(addprefix tests/e2e/test_,bad_input.py compatibility.py decisions.py grpc_front.py \
	passthrough.py errors.py streaming.py)

.PHONY: setup run test lint models clean help tools proto bench loadtest fuzz examples wheel compiled bench-compiled

help:
	@echo "make run     set up, then start Triton + sidecar + gateway (Ctrl-C stops all)"
	@echo "make test    set up, then run the lint checks and the test suite"
	@echo "make lint    ruff + mypy --strict"
	@echo "make models  retrain claims_risk v1/v2 into model_repo/"
	@echo "make wheel   a wheel with the request path compiled by mypyc (dist/)"
	@echo "make bench-compiled  CPU per call, compiled modules against pure Python"
	@echo "make bench   measure gateway + sidecar overhead against direct Triton"
	@echo "             (BENCH_ARGS=--transports: also our transports vs uvicorn/aiohttp/redis-py;"
	@echo "             BENCH_ARGS=--tree=build/compiled, after make compiled: the build make wheel ships)"
	@echo "make examples CLIENT_REPO=path  Triton's client examples, direct and through the gateway"
	@echo "make loadtest SCENARIO=steady|canary|noisy|shadow  Locust against make run's stack"

setup: $(STAMP)

# torch==2.13.0 (CPU) and nvidia-pytriton come from the 'triton' extra: only the
# local stack and the tests need them, never the gateway/sidecar runtime.
$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: install Python 3.11"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[triton,dev]'
	rm -f $(VENV)/.installed-*
	touch $@

$(MODELS): | $(STAMP)
	$(BIN)/aios models build

models: $(STAMP)
	$(BIN)/aios models build

$(DEV_SECRET):
	@mkdir -p $(dir $@)
	@umask 077 && $(PYTHON) -c 'import secrets; print(secrets.token_urlsafe(48))' > $@
	@echo "wrote a development HS256 secret to $@ (this machine's stack only)"

$(DEV_SIGNING_KEY): | $(STAMP)
	$(BIN)/aios audit keygen --private $@ --public var/audit-signing.pub.pem

run: $(STAMP) $(MODELS) $(DEV_SECRET) $(DEV_SIGNING_KEY)
	$(BIN)/aios up --config $(CONFIG)

# System programs the tests start themselves (a hermetic redis-server per test run).
tools:
	@command -v redis-server >/dev/null || { echo "redis-server not found: apt-get install -y redis-server"; exit 1; }
	@command -v chromium >/dev/null || { echo "chromium not found (the console's browser tests): apt-get install -y chromium"; exit 1; }
	@command -v gcc >/dev/null || { echo "gcc not found (mypyc's build of the request path): apt-get install -y gcc python3-dev"; exit 1; }

lint: $(STAMP)
	$(BIN)/ruff check aios aios_cli gateway sidecar tests loadtests
	$(BIN)/mypy

# The compiled build runs beside the pure suite, niced: its compiler takes the CPU the
# suite leaves idle (about half of these 2 cores), not the suite's.
test: $(STAMP) $(MODELS) tools lint
	@mkdir -p build
	nice -n 19 $(MAKE) --no-print-directory compiled >build/compiled.log 2>&1 & build=$$!; \
	  $(BIN)/python -m pytest; tests=$$?; \
	  wait $$build; built=$$?; \
	  [ $$built -eq 0 ] || { echo "make compiled failed (build/compiled.log):"; tail -25 build/compiled.log; }; \
	  [ $$tests -eq 0 ] && [ $$built -eq 0 ]
	cd $(COMPILED) && $(CURDIR)/$(BIN)/python -m pytest -q $(COMPILED_TESTS)

clean:
	rm -rf $(VENV) var build dist .pytest_cache .mypy_cache .ruff_cache *.egg-info

# Regenerate the project's own gRPC code (committed) from proto/*.proto.
proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. --pyi_out=. proto/routing_admin.proto
	$(BIN)/python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. proto/decision_record.proto
	$(BIN)/python -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. --pyi_out=. proto/audit.proto
	$(BIN)/python -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. --pyi_out=. proto/review.proto

# The request path compiled by mypyc (the modules setup.py names): a wheel to deploy.
wheel: $(STAMP) tools
	AIOS_COMPILE=1 $(BIN)/pip wheel --quiet --disable-pip-version-check --no-build-isolation --no-deps -w dist .

# The same, compiled in place in a copy of the tree ($(COMPILED)): `make test` runs the
# compiled modules' tests there; loadtests.variants compares it with this tree.
compiled: $(STAMP) tools
	rm -rf $(COMPILED) && mkdir -p $(COMPILED)
	git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t $(COMPILED)
	cd $(COMPILED) && AIOS_COMPILE=1 $(CURDIR)/$(BIN)/python setup.py --quiet build_ext --inplace >build.log 2>&1 || { tail -20 build.log; exit 1; }
	cd $(COMPILED) && $(CURDIR)/$(BIN)/python -c "import importlib, setup; \
	  pure = [m for m in setup.COMPILED if not importlib.import_module(m[:-3].replace('/', '.')).__file__.endswith('.so')]; \
	  assert not pure, f'not compiled: {pure}'"

# Our CPU per call with and without the compiled modules, one Triton, alternated.
bench-compiled: compiled tools
	$(BIN)/python -m loadtests.variants --variant pure --variant compiled=$(COMPILED)
	$(BIN)/python -m loadtests.variants --variant pure --variant compiled=$(COMPILED) --protocol grpc

# The overhead benchmark: starts its own Triton, Redis, sidecars, gateways and nginx.
bench: $(STAMP) $(MODELS) tools
	@command -v wrk >/dev/null || { echo "wrk not found: apt-get install -y wrk"; exit 1; }
	@command -v nginx >/dev/null || echo "nginx not found (apt-get install -y nginx-light): the nginx path is skipped"
	$(BIN)/python -m loadtests.bench --out results $(BENCH_ARGS)

# Triton's own client examples (a checkout, or bare git directory, of
# triton-inference-server/client), run against Triton directly and through the gateway.
examples: $(STAMP)
	@test -n "$(CLIENT_REPO)" || { echo "set CLIENT_REPO to a checkout of triton-inference-server/client"; exit 2; }
	$(BIN)/python -m loadtests.examples --client-repo $(CLIENT_REPO) --out results

# A short headless Locust run against `make run`'s stack (start it first).
# Each scenario names its users: Locust fails a user class none of whose tasks has the tag.
SCENARIO ?= steady
USERS_steady := RestUser GrpcUser
USERS_canary := RestUser GrpcUser Ops
USERS_shadow := RestUser GrpcUser Ops
USERS_noisy := RestUser GrpcUser NoisyTenant
loadtest: $(STAMP)
	@test -n "$(USERS_$(SCENARIO))" || { echo "SCENARIO is steady, canary, noisy or shadow"; exit 2; }
	@mkdir -p results
	$(BIN)/locust -f loadtests/locustfile.py --headless --users 20 --spawn-rate 10 \
		--run-time 30s --tags $(SCENARIO) --host http://127.0.0.1:8080 \
		--csv results/locust --html results/locust.html $(USERS_$(SCENARIO))

# The fuzz properties of the suite, run long (the suite runs them briefly).
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest tests/aios/test_fuzz.py -q
