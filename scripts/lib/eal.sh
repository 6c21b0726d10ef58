# Shared by the scripts: EAL memory arguments for the mode setup.sh chose.
# Usage: eal_memory_args MODE PREFIX
eal_memory_args() {
    local mode=$1 prefix=$2
    if [[ $mode == hugepages ]]; then
        printf '"--in-memory", "--file-prefix", "%s"' "$prefix"
    else
        printf '"--no-huge", "--no-shconf", "-m", "512", "--file-prefix", "%s"' "$prefix"
    fi
}
