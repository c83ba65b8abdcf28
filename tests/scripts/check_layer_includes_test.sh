#!/usr/bin/env bash
# check_layer_includes_test.sh <source dir>: scripts/check-layer-includes, which host/CMakeLists.txt runs before
# every layer's library, fails on a wrong-way include (naming file and line), passes on allowed ones, and passes on
# the real host/core and host/api trees as host/CMakeLists.txt declares them.
set -u
src=$1
check=$src/scripts/check-layer-includes
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failures=0
expect() {  # expect <exit code> <what> <command...>
  local want=$1 what=$2
  shift 2
  "$@" >"$work/out" 2>&1
  local got=$?
  if [ "$got" -ne "$want" ]; then
    echo "FAIL: $what: exit $got, expected $want; output:" >&2
    cat "$work/out" >&2
    failures=$((failures + 1))
  fi
}

printf '#include <vector>\n\n#include "core/driver.hpp"\n' >"$work/clean.cpp"
printf '#include "core/driver.hpp"\n  #  include "store/store.hpp"\n' >"$work/wrong_way.cpp"
printf '#include <api/http_api.hpp>\n' >"$work/angle.hpp"

expect 0 "a core file including only core headers" "$check" core core "$work/clean.cpp"
expect 1 "a core file including store/" "$check" core core "$work/clean.cpp" "$work/wrong_way.cpp"
grep -q "wrong_way.cpp:2:" "$work/out" || { echo "FAIL: the report does not name wrong_way.cpp:2" >&2; failures=$((failures + 1)); }
expect 1 "a core header including api/ in angle brackets" "$check" core core "$work/angle.hpp"
expect 0 "an allowed dependency (config on store)" "$check" config core,store "$work/wrong_way.cpp"
expect 1 "store including api/" "$check" store core "$work/angle.hpp"
expect 2 "a file that cannot be read" "$check" core core "$work/missing.cpp"
expect 0 "the real host/core" "$check" core core "$src"/host/core/*.cpp "$src"/host/core/*.hpp
expect 0 "the real host/api" "$check" api core,metrics "$src"/host/api/*.cpp "$src"/host/api/*.hpp
expect 1 "the real host/app checked as if it were core" "$check" core core "$src"/host/app/*.cpp

[ "$failures" -eq 0 ] && echo "check-layer-includes: all cases behave"
exit $((failures > 0))
