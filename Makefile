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

.PHONY: setup run test lint models clean help tools proto bench loadtest fuzz examples

help:
	@echo "make run     set up, then start Triton + sidecar + gateway (Ctrl-C stops all)"
	@echo "make test    set up, then run the lint checks and the test suite"
	@echo "make lint    ruff + mypy --strict"
	@echo "make models  retrain claims_risk v1/v2 into model_repo/"
	@echo "make bench   measure gateway + sidecar overhead against direct Triton"
	@echo "             (BENCH_ARGS=--transports: also our transports vs uvicorn/aiohttp/redis-py)"
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

lint: $(STAMP)
	$(BIN)/ruff check aios aios_cli gateway sidecar tests loadtests
	$(BIN)/mypy

test: $(STAMP) $(MODELS) tools lint
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache *.egg-info

# Regenerate the project's own gRPC code (committed) from proto/*.proto.
proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. --pyi_out=. proto/routing_admin.proto
	$(BIN)/python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. proto/decision_record.proto
	$(BIN)/python -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. --pyi_out=. proto/audit.proto
	$(BIN)/python -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. --pyi_out=. proto/review.proto

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
