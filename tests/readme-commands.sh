#!/usr/bin/env bash
# "On a fresh clone, each command in the README runs as written": runs the commands of
# README.md's "The two commands" section (its ```sh blocks, and the `curl ...` and
# `recastctl ...` commands its prose gives inline) and fails if any exits non-zero.
# tests/run-tests.sh (make test) calls it after the cargo tests, so the binaries are built.
#
# What is not run literally, and why:
# - `make test`: this script runs inside it (recursion).
# - `make run`: run as written, in the background, with DATA_DIR pointing at a temp directory
#   (the README's commands reach it through RECAST_DATA_DIR, which recastctl reads just as it
#   reads ./.recast-data), so a developer's own .recast-data is left alone. Its ports are the
#   README's (8080, 8081): if they are taken, stop what holds them (a `make run` of your own).
# - `make demo`: run as written with DATA_DIR and DEMO_DIR in temp directories, DEMO_WAIT=0
#   and DEMO_PACE=0 (no pauses for a watcher) and DEMO_ARGS=--exit-when-done (it otherwise runs until Ctrl-C).
#   It needs the same ports and 8443, so it runs after `make run` was stopped.
# - a `get ... -w` (watch) never ends by itself: it runs for 5 s under `timeout`, and being
#   stopped there counts as success.
# - `recastctl ...` in the prose means the installed binary: the one cargo built
#   (target/debug) is put first on PATH.
set -uo pipefail
cd "$(dirname "$0")/.."

target="${CARGO_TARGET_DIR:-$PWD/target}"
export PATH="$target/debug:$PATH"
tmp="$(mktemp -d)"
export RECAST_DATA_DIR="$tmp/data"
run_pid=""
cleanup() {
  if [[ -n $run_pid ]]; then kill -- -"$run_pid" 2>/dev/null; wait "$run_pid" 2>/dev/null; fi
  rm -rf "$tmp"
}
trap cleanup EXIT

# The commands, one per line, in README order.
python3 - README.md >"$tmp/commands" <<'PY'
import re, sys
text = open(sys.argv[1], encoding="utf-8").read()
start = text.index("\n## The two commands")
end = text.find("\n## ", start + 1)
section = text[start:end if end != -1 else len(text)]
out = []
in_block = False
for line in section.splitlines():
    if line.startswith("```"):
        in_block = line.strip() == "```sh" if not in_block else False
        continue
    if in_block:
        # A trailing comment is two or more spaces, then '#'.
        cmd = re.sub(r"\s{2,}#.*$", "", line).strip()
        if cmd and not cmd.startswith("#"):
            out.append(cmd)
    else:
        for span in re.findall(r"`([^`]+)`", line):
            if span.startswith(("curl ", "recastctl ")):
                out.append(span)
seen = set()
for cmd in out:
    if cmd not in seen:
        seen.add(cmd)
        print(cmd)
PY
if [[ ! -s $tmp/commands ]]; then
  echo "readme-commands: found no commands in README.md's \"The two commands\" section; did its title change?" >&2
  exit 1
fi

failed=0
ran=0
wait_for_make_run() {
  # Up to 10 minutes: on a fresh clone `make run` first builds the operator.
  for _ in $(seq 1 1200); do
    # Ready, and the boot service listening (any HTTP answer will do).
    if curl -fsS -o /dev/null 127.0.0.1:8080/readyz 2>/dev/null &&
      curl -sS -o /dev/null 127.0.0.1:8081/ 2>/dev/null; then
      return 0
    fi
    if ! kill -0 "$run_pid" 2>/dev/null; then break; fi
    sleep 0.5
  done
  echo "readme-commands: make run did not become ready; its output:" >&2
  cat "$tmp/make-run.log" >&2
  return 1
}
stop_make_run() {
  if [[ -n $run_pid ]]; then
    kill -- -"$run_pid" 2>/dev/null
    wait "$run_pid" 2>/dev/null
    run_pid=""
  fi
}

while IFS= read -r cmd; do
  case "$cmd" in
    "make test")
      echo "--- skipped: $cmd (this script runs inside it)"
      continue
      ;;
    "make run")
      echo "--- $cmd (DATA_DIR=$RECAST_DATA_DIR, in the background)"
      # Its own process group, so that stopping it stops cargo's child too.
      setsid make run DATA_DIR="$RECAST_DATA_DIR" </dev/null >"$tmp/make-run.log" 2>&1 &
      run_pid=$!
      ran=$((ran + 1))
      wait_for_make_run || failed=$((failed + 1))
      continue
      ;;
    "make demo")
      stop_make_run
      echo "--- $cmd (DEMO_WAIT=0 DEMO_ARGS=--exit-when-done, temp DATA_DIR and DEMO_DIR)"
      ran=$((ran + 1))
      if ! make demo DATA_DIR="$RECAST_DATA_DIR" DEMO_DIR="$tmp/demo" DEMO_WAIT=0 DEMO_PACE=0 DEMO_ARGS=--exit-when-done </dev/null >"$tmp/out" 2>&1; then
        cat "$tmp/out"
        echo "*** FAILED: $cmd" >&2
        failed=$((failed + 1))
      else
        tail -n 5 "$tmp/out"
      fi
      continue
      ;;
  esac
  echo "--- $cmd"
  ran=$((ran + 1))
  if [[ $cmd =~ (^|[[:space:]])(-w|--watch)($|[[:space:]]) ]]; then
    timeout 5 bash -c "$cmd" </dev/null >"$tmp/out" 2>&1
    rc=$?
    if [[ $rc == 124 ]]; then rc=0; fi
  else
    bash -c "$cmd" </dev/null >"$tmp/out" 2>&1
    rc=$?
  fi
  head -n 20 "$tmp/out"
  if [[ $rc != 0 ]]; then
    echo "*** FAILED (exit $rc): $cmd" >&2
    failed=$((failed + 1))
  fi
done <"$tmp/commands"
stop_make_run

echo
echo "readme-commands: $ran command(s) run, $failed failed"
((failed == 0))
