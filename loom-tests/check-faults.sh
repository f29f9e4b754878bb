#!/usr/bin/env bash
# Shows that the loom models can fail: applies each deliberate fault of
# loom-tests/faults/*.diff to a scratch copy of the committed tree (HEAD;
# never the shared working tree), runs every model alone, reports which
# models caught it, and throws the copy away.
#
#   loom-tests/check-faults.sh            # every fault
#   loom-tests/check-faults.sh F2         # faults whose name starts with F2
#
# Builds in target/loom-faults (first run: a full release build).
set -uo pipefail
root=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
git -C "$root" archive HEAD | tar -x -C "$scratch"
rm -rf "$scratch/loom-tests"
cp -r "$root/loom-tests" "$scratch/loom-tests"   # the models as they are now
export RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR="$root/target/loom-faults"
models=(
  "caching caching_two_threads_allocate_and_free 1"
  "caching sharded_cache_cross_thread_free 1b"
  "graph_pools graph_mode_is_per_thread 2"
  "graph_pools cross_thread_free_goes_to_the_pool 3"
  "graph_pools reset_races_last_free 4"
  "graph_pools last_handle_drop_races_last_free 5"
  "slot first_use_get_races_install 6"
  "streams an_event_completing_races_an_allocation 7"
  "kept_records a_revival_through_the_kept_address_races_a_double_free 19"
)
cd "$scratch"
for diff in "$root"/loom-tests/faults/${1:-}*.diff; do
  name=$(basename "$diff" .diff)
  echo "== $name"
  if ! patch -s -p1 --dry-run < "$diff" >/dev/null; then
    echo "   does not apply to HEAD any more (stale fault): skipped"; continue
  fi
  patch -s -p1 < "$diff"
  if ! cargo test --release -q -p loom-tests --no-run > "$scratch/build.log" 2>&1; then
    echo "   build failed:"; tail -20 "$scratch/build.log"; patch -s -R -p1 < "$diff"; continue
  fi
  for m in "${models[@]}"; do
    set -- $m
    out=$(cargo test --release -q -p loom-tests --test "$1" -- --exact "$2" 2>&1)
    if [ $? -eq 0 ]; then
      echo "   model $3: passed"
    else
      echo "   model $3: FAILED: $(echo "$out" | grep -m1 -A1 'panicked at' | tr '\n' ' ')"
    fi
  done
  patch -s -R -p1 < "$diff"
done
