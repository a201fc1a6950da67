# Shared by the benchmark scripts that start `hearth node` processes on loopback. Source it after
# setting HEARTH (the binary); it makes a temporary directory `$work`, and stops every node started
# with start_node and removes `$work` on exit.
work="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

# start_node DIR NAME CORE [hearth node args...]: starts a node on loopback (pinned to CORE when
# PIN is set) and waits (bounded) for its runtime file.
start_node() {
  local dir="$1" name="$2" core="$3"; shift 3
  ${PIN:+taskset -c "$core"} "$HEARTH" --data-dir "$dir" node --name "$name" --listen /ip4/127.0.0.1/tcp/0 --api 127.0.0.1:0 \
    --mdns false "$@" 2>"$dir/node.log" &
  pids+=($!)
  for _ in $(seq 100); do [ -f "$dir/node.json" ] && return; sleep 0.1; done
  echo "node $name did not start" >&2; cat "$dir/node.log" >&2; exit 1
}

# field FILE KEY [SUFFIX]: a value from a node's runtime JSON file.
field() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]]${3:-})" "$@"; }
