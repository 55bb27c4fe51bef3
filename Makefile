# signrelay — `make run` starts the relay, `make test` runs every test.
# Both install what they need on a fresh machine (Go modules, npm packages,
# and Chromium for the browser tests, through apt-get when run as root).

GO        ?= go
CHROMIUM  ?= /usr/bin/chromium
# Each fuzz target runs for a number of executions (about 8 s each on two
# cores), not for a wall-clock time: go1.26's fuzzer can fail a run whose
# -fuzztime deadline falls while a worker is mid-call ("context deadline
# exceeded", golang/go#75804, fixed in go1.27). FUZZTIME=30s overrides every
# count with a duration, for a longer run by hand.
FUZZTIME  ?=
# The external NATS server of tests/cluster (Debian's nats-server is too old).
NATS_SERVER_VERSION ?= v2.15.3

.PHONY: run test test-go test-browser fuzz bench-smoke bench bench-quick lint deps deps-go deps-browser deps-nats cluster bench-cluster
.PHONY: static

run:
	$(GO) run .

# Three relays with embedded NATS routed to each other on loopback, to try
# a cluster (HTTP on 8081-8083); Ctrl-C stops them. See scripts/cluster.sh.
cluster:
	scripts/cluster.sh

# The pieces that come from outside (npm packages, Chromium, nats-server)
# are fetched first, so that a missing one fails in seconds, not after the
# Go tests.
test: deps-browser deps-nats lint test-go fuzz bench-smoke test-browser

# The binary the Dockerfile builds (./signrelay): static, no cgo, no build
# paths or symbols. tests/deploy builds it from the Dockerfile's own line
# and checks that it is static; `file` says "statically linked".
static:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags="-s -w" -o signrelay .
	@file signrelay 2>/dev/null || true

deps: deps-go deps-browser deps-nats

deps-go:
	$(GO) mod download

# nats-server for tests/cluster, built with go install into GOBIN (or
# GOPATH/bin) unless that one is already NATS_SERVER_VERSION (~30 s).
deps-nats:
	@bin="$$($(GO) env GOBIN)"; [ -n "$$bin" ] || bin="$$($(GO) env GOPATH | cut -d: -f1)/bin"; \
	if ! "$$bin/nats-server" --version 2>/dev/null | grep -qx 'nats-server: $(NATS_SERVER_VERSION)'; then \
		echo "installing nats-server $(NATS_SERVER_VERSION) into $$bin (for tests/cluster)"; \
		$(GO) install github.com/nats-io/nats-server/v2@$(NATS_SERVER_VERSION); \
	fi

deps-browser:
	@test -d node_modules/playwright-core || npm ci --no-audit --no-fund
	@test -x $(CHROMIUM) || scripts/install-chromium.sh

lint: deps-go
	@out=$$(gofmt -l $$(find . -name '*.go' -not -path './node_modules/*')); if [ -n "$$out" ]; then echo "gofmt needed: $$out"; exit 1; fi
	$(GO) vet ./...

test-go: deps-go deps-nats
	$(GO) test -race -count=1 ./...

# A short run of each fuzz target on top of the shipped seed corpus: the
# decoders (fast path against the reference), the weak-key check, the
# X-Forwarded-For walk and the cluster bus's binary messages.
fuzz: deps-go
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeHolderFrame$$' -fuzztime $(or $(FUZZTIME),80000x) ./protocol
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeSignBody$$' -fuzztime $(or $(FUZZTIME),100000x) ./protocol
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeObject$$' -fuzztime $(or $(FUZZTIME),60000x) ./protocol
	$(GO) test -run '^$$' -fuzz '^FuzzPublicKeyCheck$$' -fuzztime $(or $(FUZZTIME),100000x) ./protocol
	$(GO) test -run '^$$' -fuzz '^FuzzRealClientIP$$' -fuzztime $(or $(FUZZTIME),35000x) -fuzzminimizetime 1s ./httpapi
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeEnvelope$$' -fuzztime $(or $(FUZZTIME),40000x) ./cluster

# Every testing.B benchmark once, so that none rots; no timing is judged.
bench-smoke: deps-go
	$(GO) test -run '^$$' -bench . -benchtime 1x ./...

test-browser: deps-browser
	CHROMIUM_PATH=$(CHROMIUM) node --test tests/browser/unit.test.mjs tests/browser/e2e.test.mjs

# Reproduce docs/benchmarks.md: builds the relay and the load generator,
# runs the load, latency and idle-connection runs on loopback and the
# testing.B benchmarks (~7 min). bench-quick is a shorter version.
bench: deps-go
	scripts/bench.sh

bench-quick: deps-go
	scripts/bench.sh quick

# Cross-node round trips (docs/benchmarks.md, "Cluster"): one relay against
# two relays over external and embedded NATS (~2 min 15 s, loopback only).
bench-cluster: deps-go deps-nats
	scripts/bench-cluster.sh
