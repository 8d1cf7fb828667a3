# recast — the targets operator users expect (kubebuilder-style).
#
# Every cargo call passes --ignore-rust-version: the `wim` crate family declares
# rust-version 1.96 but builds and passes its tests on 1.95, the toolchain this project pins
# (see README, "Toolchain").
CARGO       ?= cargo
CARGO_FLAGS ?= --ignore-rust-version
DATA_DIR    ?= $(CURDIR)/.recast-data
# The examples' BMC addresses are placeholders: `make run` records power cycles instead of
# performing them. POWER_DRIVER=redfish drives real BMCs.
POWER_DRIVER ?= record

.PHONY: all build run demo test e2e attacks fuzz redfish-setup lint fmt docs crds crds-check image imager helm-setup bench-controller bench-boot bench-images bench-imager bench-multicast bench-gateway bench-gateway-kube k8s-build k8s-demo k8s-up k8s-down clean help

all: build

help: ## Show the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

build: ## Build every binary (debug)
	$(CARGO) build $(CARGO_FLAGS) --workspace --bins

run: ## recast's main job: the operator on the embedded store, loaded with examples/ (fresh $(DATA_DIR))
	rm -rf $(DATA_DIR)
	$(CARGO) run $(CARGO_FLAGS) -q -p recast-operator -- run --backend embedded --data-dir $(DATA_DIR) --load examples/ --power-driver $(POWER_DRIVER) --boot-http 127.0.0.1:8081

DEMO_DIR  ?= $(CURDIR)/.recast-demo
# Seconds the demo pauses after the operator starts, to open `recastctl get rep -w` first.
DEMO_WAIT ?= 10
# Seconds between the imaging steps, so that the watch (one poll a second) shows each step.
DEMO_PACE ?= 2
# More recast-demo options (--exit-when-done, other addresses: recast-demo --help).
DEMO_ARGS ?=

demo: ## recast at work without hardware (< 1 min, narrated): a real golden WIM, agents, a failed rollback reimaged by a simulated imaging client (fresh $(DATA_DIR))
	$(CARGO) build $(CARGO_FLAGS) -q -p recast-operator -p recastctl -p recast-agent -p recast-tests --bins
	$(CARGO) run $(CARGO_FLAGS) -q -p recast-tests --bin recast-demo -- --data-dir $(DATA_DIR) --work-dir $(DEMO_DIR) --watcher-wait $(DEMO_WAIT) --pace $(DEMO_PACE) $(DEMO_ARGS)

test: ## Every test tier: unit, property, embedded and the real kube-apiserver
	tests/run-tests.sh

e2e: ## The whole loop end to end under faults, embedded and on the apiserver (root, QEMU; part of `make test`)
	$(CARGO) build $(CARGO_FLAGS) --workspace --bins
	tests/run-tests.sh -p recast-operator --test e2e -- --nocapture

attacks: ## The attack suite (operator/tests/attack_*.rs): each takeover path of docs/security.md, performed against the real binaries (part of `make test`)
	tests/run-tests.sh -p recast-operator --test 'attack_*'

FUZZ_SECONDS ?= 20

fuzz: ## Every fuzz target for $(FUZZ_SECONDS) s each (libFuzzer + ASan on the stable toolchain, fuzz/run.sh; CI runs it)
	fuzz/run.sh $(FUZZ_SECONDS)

redfish-setup: ## Install the Redfish test peer (sushy-tools in a venv under ~/.cache/recast/sushy)
	tests/redfish/setup.sh

lint: crds-check ## cargo fmt --check, clippy -D warnings, the CRD YAML is current, and the architecture rules hold
	$(CARGO) fmt --all --check
	tests/arch/check.py
	$(CARGO) clippy $(CARGO_FLAGS) --workspace --all-targets -- -D warnings
	# recastctl alone: the operator library without its services (the feature unification of
	# a workspace build hides a module that no longer compiles without them).
	$(CARGO) clippy $(CARGO_FLAGS) -p recastctl -- -D warnings

fmt: ## Format the code
	$(CARGO) fmt --all

crds: ## Regenerate crds/yaml (and the Helm chart's copy) from the API types
	$(CARGO) run $(CARGO_FLAGS) -q -p recast-crds --bin crdgen -- crds/yaml
	$(CARGO) run $(CARGO_FLAGS) -q -p recast-crds --bin crdgen -- charts/recast/crds

docs: ## Regenerate generated docs (docs/lifecycle.md)
	RECAST_UPDATE_DOCS=1 $(CARGO) test $(CARGO_FLAGS) -q -p recast-core --lib lifecycle_doc_is_current

crds-check: ## Fail when crds/yaml or the chart's CRDs differ from what the types generate
	$(CARGO) run $(CARGO_FLAGS) -q -p recast-crds --bin crdgen -- --check crds/yaml
	$(CARGO) run $(CARGO_FLAGS) -q -p recast-crds --bin crdgen -- --check charts/recast/crds

BENCH_ENDPOINTS ?= 10000

bench-controller: ## The controller over $(BENCH_ENDPOINTS) endpoints on both backends vs a naive controller, and wave planning vs a naive planner (prints tables)
	$(CARGO) build --release $(CARGO_FLAGS) -p recast-operator --bin recast-operator --example bench_controller --example bench_wave_plan
	target/release/examples/bench_wave_plan $(BENCH_ENDPOINTS)
	tests/k8s/harness.sh up
	target/release/examples/bench_controller target/release/recast-operator $(BENCH_ENDPOINTS)

bench-boot: ## Boot service: TFTP vs tftpd-hpa (64 MiB, 1 and 50 clients; windowsize 16 vs 1; 300 MiB WinPE boot.wim at the BCD sizes) and HTTP vs nginx (1 GiB, 8 clients) (prints tables)
	tests/boot/setup.sh
	$(CARGO) build --release $(CARGO_FLAGS) -p recast-operator --bin recast-operator --example bench_tftp
	target/release/examples/bench_tftp
	tests/bench/boot-http.sh target/release/recast-operator

BENCH_IMAGE_MIB ?= 2048

bench-images: ## sha256, WIM inspection and integrity checks vs sha256sum and wimlib-imagex on a $(BENCH_IMAGE_MIB) MiB file (prints a table)
	tests/golden/setup.sh
	$(CARGO) build --release $(CARGO_FLAGS) -p recast-golden --example bench_images
	target/release/examples/bench_images $(BENCH_IMAGE_MIB)

BENCH_APPLY_MIB ?= 512

bench-imager: ## recast-imager's download+verify+apply vs curl, sha256sum and wimlib-imagex apply (and curl | apply -) on a $(BENCH_APPLY_MIB) MiB WIM (prints a table)
	imager/env/setup.sh
	# The server (the same for every contender) only sends the file with sendfile(2): a debug
	# build serves it as fast as a release one.
	$(CARGO) build $(CARGO_FLAGS) -p recast-operator --bin recast-operator
	$(CARGO) build --release $(CARGO_FLAGS) -p recast-imager --example bench_apply
	target/release/examples/bench_apply target/debug/recast-operator $(BENCH_APPLY_MIB)

BENCH_MULTICAST_MIB ?= 128

bench-multicast: ## A wave's transfer for 1, 10 and 50 machines (receiver processes in namespaces): unicast HTTP from recast's boot service vs one udpcast session, wave time and server bytes from the interface (prints a table)
	imager/env/setup.sh
	$(CARGO) build $(CARGO_FLAGS) -p recast-operator --bin recast-operator
	tests/bench/multicast.sh target/debug/recast-operator $(BENCH_MULTICAST_MIB) 1 10 50

BENCH_REPORTS ?= 5

bench-gateway: ## The agent gateway under recast-agent simulate ($(BENCH_ENDPOINTS) endpoints) vs nginx's static 204 over TLS (prints a table)
	tests/gateway/setup.sh
	$(CARGO) build --release $(CARGO_FLAGS) -p recast-operator -p recast-agent --bin recast-operator --bin recast-agent --example bench_gateway
	target/release/examples/bench_gateway target/release/recast-operator target/release/recast-agent $(BENCH_ENDPOINTS) $(BENCH_REPORTS)

bench-gateway-kube: ## The same on the kube backend: a --role gateway replica with its state in the real kube-apiserver (make k8s-up)
	tests/gateway/setup.sh
	tests/k8s/harness.sh up
	$(CARGO) build --release $(CARGO_FLAGS) -p recast-operator -p recast-agent --bin recast-operator --bin recast-agent --example bench_gateway
	target/release/examples/bench_gateway target/release/recast-operator target/release/recast-agent $(BENCH_ENDPOINTS) $(BENCH_REPORTS) kube

image: ## Build and smoke-test the recast-operator image from a release build (root; images/build.sh)
	images/build.sh --release

IMAGER_OUT ?= $(CURDIR)/target/imaging-environment/serve

imager: ## recast's Linux imaging environment in $(IMAGER_OUT)/linux/{vmlinuz,initrd} and the signed chain in $(IMAGER_OUT)/sb/ (release recast-imager; content-cached; IMAGER_CA=FILE trusts the site's CA for --boot-https); `--imaging-environment linux --boot-root DIR` expects linux/ and sb/ under DIR
	$(CARGO) build $(CARGO_FLAGS) --release -p recast-imager
	imager/env/setup.sh
	imager/env/build.sh --imager target/release/recast-imager --out $(IMAGER_OUT) $(if $(IMAGER_CA),--ca $(IMAGER_CA))
	imager/env/signed-chain.sh --out $(IMAGER_OUT)

helm-setup: ## Build (or reuse) helm from its Go module (tests/helm/setup.sh)
	tests/helm/setup.sh

k8s-build: ## Build (or reuse) kube-apiserver, etcd and kubectl from their Go modules
	tests/k8s/build.sh

k8s-demo: ## The API on the real kube-apiserver: CRDs and examples applied (stop with make k8s-down)
	tests/run-k8s-demo.sh

k8s-up: ## Start the real kube-apiserver + etcd on loopback (.k8s/kubeconfig)
	tests/k8s/harness.sh up

k8s-down: ## Stop them and remove .k8s
	tests/k8s/harness.sh down

clean: k8s-down ## Remove build output and local state (the Go binary cache stays)
	$(CARGO) clean
	rm -rf $(DATA_DIR) $(DEMO_DIR)
