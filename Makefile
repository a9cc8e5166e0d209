# Clinical Images. `make help` lists the targets.
SHELL := /bin/bash
MODULES := pkg dev services/api services/relay services/committer services/thumbnailer deploy/local
PKGS := $(addprefix ./,$(addsuffix /...,$(MODULES)))
ARTIFACTS ?= $(CURDIR)/artifacts
export CLINIMG_ARTIFACTS := $(ARTIFACTS)

.PHONY: help run stack test test-go test-js property lint build tidy-check smoke bench deps deps-run

help: ## List the targets.
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

run: deps-run ## Start the whole system on embedded parts and print the URL to open.
	go run ./deploy/local/cmd/clinimg-local

stack: deps ## Run the production topology deploy/compose.yaml describes as processes here (redis with AOF, three NATS nodes, versitygw, ALEX simulator, 2 APIs, 2 relays, 2 committers, a thumbnailer).
	go run ./deploy/local/cmd/clinimg-stack

test: deps lint build test-js test-go smoke ## Install what is missing, then lint, build every module alone, run the pages' unit tests and every Go test with -race, and a newcomer's curl run.

test-go: ## Run every Go test with the race detector.
	go test -race -count=1 -p 1 -timeout 25m $(PKGS)

test-js: ## The pages' unit tests (the shared session model, the upload queue) with Node's built-in runner.
	cd services/api/web && node --test test/

N ?= 5000
property: ## Run the commit property test longer: N schedules (default 5000; PROPERTY_SEED=s replays one), and N/50 with killed committer processes.
	PROPERTY_N=$(N) PROPERTY_KILL_N=$$(( $(N) / 50 > 4 ? $(N) / 50 : 4 )) go test -race -count=1 -timeout 0 -v -run 'TestCommitProperty' ./services/committer

lint: ## gofmt, go vet and staticcheck on every module; go.mod files tidy.
	@test -z "$$(gofmt -l pkg dev services deploy)" || { gofmt -l pkg dev services deploy; echo "gofmt: files above need formatting"; exit 1; }
	go vet $(PKGS)
	go run honnef.co/go/tools/cmd/staticcheck@v0.8.2 $(PKGS)
	@$(MAKE) --no-print-directory tidy-check

tidy-check: ## Fail if `go mod tidy` would change any go.mod.
	@for m in $(MODULES); do (cd $$m && cp go.mod /tmp/go.mod.bak && cp go.sum /tmp/go.sum.bak && GOWORK=off go mod tidy >/dev/null 2>&1; \
	  if ! cmp -s go.mod /tmp/go.mod.bak; then diff /tmp/go.mod.bak go.mod; cp /tmp/go.mod.bak go.mod; cp /tmp/go.sum.bak go.sum; echo "$$m: go mod tidy changes go.mod"; exit 1; fi; \
	  cp /tmp/go.sum.bak go.sum) || exit 1; done

build: ## Build every module on its own (GOWORK=off), as a Docker build would.
	@for m in $(MODULES); do echo "build $$m"; (cd $$m && GOWORK=off go build ./...) || exit 1; done

smoke: ## A newcomer's run: start the local stack and walk the seeds' flow with curl.
	scripts/smoke.sh

bench: deps ## Run every benchmark and print one table with each reference figure beside it.
	scripts/bench.sh

deps: ## Install and start what the tests need (apt packages, redis, nats, node validators).
	scripts/deps.sh test

deps-run:
	@scripts/deps.sh run
