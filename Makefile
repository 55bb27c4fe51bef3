# signrelay — `make run` starts the relay, `make test` runs every test.
# Both install what they need on a fresh machine (Go modules, npm packages,
# and Chromium for the browser tests, through apt-get when run as root).

GO        ?= go
CHROMIUM  ?= /usr/bin/chromium
FUZZTIME  ?= 8s

.PHONY: run test test-go test-browser fuzz bench-smoke bench bench-quick lint deps deps-go deps-browser

run:
	$(GO) run .

test: lint test-go fuzz bench-smoke test-browser

deps: deps-go deps-browser

deps-go:
	$(GO) mod download

deps-browser:
	@test -d node_modules/playwright-core || npm ci --no-audit --no-fund
	@test -x $(CHROMIUM) || scripts/install-chromium.sh

lint: deps-go
	@out=$$(gofmt -l $$(find . -name '*.go' -not -path './node_modules/*')); if [ -n "$$out" ]; then echo "gofmt needed: $$out"; exit 1; fi
	$(GO) vet ./...

test-go: deps-go
	$(GO) test -race -count=1 ./...

# A short run of each fuzz target on top of the shipped seed corpus: the
# decoders (fast path against the reference), the weak-key check and the
# X-Forwarded-For walk.
fuzz: deps-go
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeHolderFrame$$' -fuzztime $(FUZZTIME) ./protocol
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeSignBody$$' -fuzztime $(FUZZTIME) ./protocol
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeObject$$' -fuzztime $(FUZZTIME) ./protocol
	$(GO) test -run '^$$' -fuzz '^FuzzPublicKeyCheck$$' -fuzztime $(FUZZTIME) ./protocol
	$(GO) test -run '^$$' -fuzz '^FuzzRealClientIP$$' -fuzztime $(FUZZTIME) -fuzzminimizetime 1s ./httpapi

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
