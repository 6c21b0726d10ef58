# shellcheck shell=bash
# Shared by the benchmarks that count instructions with callgrind, whose
# counts repeat exactly where times on a shared machine do not. Source it
# from the repository root.

# executable TARGET CARGO_ARGS...: the path of the test or bench executable
# that `cargo CARGO_ARGS... --no-run` builds for target TARGET.
executable() {
    local target=$1
    shift
    cargo "$@" --no-run --message-format=json 2>/dev/null | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == sys.argv[1] and m.get("executable"):
        print(m["executable"])' "$target"
}

# counted FILE TOGGLE CMD...: the instructions CMD runs inside the functions
# matching TOGGLE (callgrind's --toggle-collect), its profile kept in FILE.
counted() {
    local file=$1 toggle=$2
    shift 2
    valgrind --tool=callgrind --quiet --toggle-collect="$toggle" --callgrind-out-file="$file" \
        "$@" >/dev/null
    callgrind_annotate "$file" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }'
}
