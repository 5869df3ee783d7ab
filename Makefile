# avlgate — the README's commands. `make demo` and `make test` work on a fresh Debian
# machine as root: they install what is missing first (.ci/install-deps).
#
#   make            Release build (optimised, debug info) in build/, binaries in build/bin/
#   make test       every test: Debug (ASan+UBSan) suite, bounded libFuzzer runs, TSan ring tests,
#                   Release suite, the business plane (Directus, a browser) end to end
#   make test-directus      tests/directus/run.sh: Directus + gateway + fleet, REST, WebSocket, UI
#   make demo       build, then PostgreSQL under ./var + the gateway + a simulated fleet
#   make demo-directus      the demo's stack + Directus: admin URL, operator login, a command to click
#   make bench      bench-micro, then bench-e2e
#   make bench-micro        codec micro-benchmarks, medians of 5 repetitions
#   make bench-e2e          bench/e2e: COPY ceiling vs gateway end to end, ACK latency (a few minutes)
#   make bench-connections  bench/connections: 100,000 idle devices, memory per connection
#   make bench-commands     bench/commands: command insert -> frame on an online device's socket
#   make bench-multi        bench/multi: one instance vs two behind HAProxy (~2 min)
#   make fuzz       long libFuzzer runs: codec, HTTP request reader, config file (FUZZ_SECONDS
#                   each, default 3600)
#   make format     clang-format every C/C++ source in place

JOBS ?= 2
FUZZ_SECONDS ?= 3600
CI_FUZZ_SECONDS ?= 60
CI_FUZZ_PARSER_SECONDS ?= 30
FUZZ_TARGETS = fuzz_codec fuzz_http fuzz_config fuzz_proxyhdr
CMAKE ?= cmake

.PHONY: all build deps test test-debug test-fuzz test-tsan test-release demo bench bench-micro \
	bench-e2e bench-connections bench-commands bench-multi fuzz format clean test-directus demo-directus

all: build

deps:
	@.ci/install-deps

build: deps
	$(CMAKE) -S . -B build -DCMAKE_BUILD_TYPE=Release
	$(CMAKE) --build build -j$(JOBS)

test: deps test-fuzz test-tsan test-debug test-release test-directus

test-debug:
	$(CMAKE) -S . -B build-debug -DCMAKE_BUILD_TYPE=Debug -DAVLGATE_WERROR=ON
	$(CMAKE) --build build-debug -j$(JOBS)
	ctest --test-dir build-debug --output-on-failure

test-fuzz:
	$(CMAKE) -S . -B build-fuzz -DCMAKE_BUILD_TYPE=Fuzz -DAVLGATE_WERROR=ON \
	  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DAVLGATE_FUZZ_SECONDS=$(CI_FUZZ_SECONDS) \
	  -DAVLGATE_FUZZ_PARSER_SECONDS=$(CI_FUZZ_PARSER_SECONDS)
	$(CMAKE) --build build-fuzz -j$(JOBS) --target $(FUZZ_TARGETS)
	ctest --test-dir build-fuzz --output-on-failure

# ThreadSanitizer over the tests labelled tsan (the SPSC ring, concurrent router readers).
test-tsan:
	$(CMAKE) -S . -B build-tsan -DCMAKE_BUILD_TYPE=Tsan -DAVLGATE_WERROR=ON
	$(CMAKE) --build build-tsan -j$(JOBS) --target test_spsc test_router
	ctest --test-dir build-tsan -L tsan --output-on-failure

test-release:
	$(CMAKE) -S . -B build -DCMAKE_BUILD_TYPE=Release -DAVLGATE_WERROR=ON
	$(CMAKE) --build build -j$(JOBS)
	ctest --test-dir build --output-on-failure

# Once, against the Release build: Directus is not in the binaries' sanitiser matrix.
test-directus: build
	@.ci/install-deps --directus
	tests/directus/run.sh build

demo: build
	@echo "== avlgate decode: what a device sends (tests/data/samples.hex) =="
	build/bin/avlgate decode tests/data/samples.hex | head -n 6
	loadgen/demo.sh build

demo-directus: build
	@.ci/install-deps --directus
	directus/demo.sh build

bench: bench-micro bench-e2e

bench-micro: build
	build/bin/avlgate-bench --benchmark_repetitions=5 --benchmark_report_aggregates_only=true \
	  --benchmark_min_time=0.2

bench-e2e: build
	.ci/install-deps --bench
	bench/e2e --build build

bench-connections: build
	.ci/install-deps --bench
	bench/connections --build build

bench-commands: build
	.ci/install-deps --bench
	bench/commands --build build

bench-multi: build
	.ci/install-deps --bench
	bench/multi --build build

fuzz:
	$(CMAKE) -S . -B build-fuzz -DCMAKE_BUILD_TYPE=Fuzz \
	  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++
	$(CMAKE) --build build-fuzz -j$(JOBS) --target $(FUZZ_TARGETS)
	tests/fuzz/run_fuzz.sh build-fuzz/bin/fuzz_codec ../shared build-fuzz/fuzz-long $(FUZZ_SECONDS)
	tests/fuzz/run_fuzz.sh build-fuzz/bin/fuzz_http ../shared build-fuzz/fuzz-long-http $(FUZZ_SECONDS)
	tests/fuzz/run_fuzz.sh build-fuzz/bin/fuzz_config ../shared build-fuzz/fuzz-long-config \
	  $(FUZZ_SECONDS)

format:
	git ls-files '*.c' '*.h' '*.cc' | xargs clang-format -i

clean:
	rm -rf build build-debug build-fuzz build-tsan
