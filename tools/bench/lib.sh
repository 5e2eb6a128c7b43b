# lib.sh — helpers the benchmark scripts share (compare.sh, pareto.sh): sourced after they cd
# to the repository root, never run on its own.

# Prints its arguments as one shell-quoted command line.
quote_args() {
    local out="" a
    for a in "$@"; do
        if [[ $a =~ [^A-Za-z0-9_./:=@,+-] ]]; then out+="'${a//\'/\'\\\'\'}' "; else out+="$a "; fi
    done
    echo "${out% }"
}
# Fails with a message prefixed by the calling script's name (exit 2: a usage error).
die() { echo "${0##*/}: $*" >&2; exit 2; }
# Option parsing: `need "$@"` fails unless the option $1 has a value after it.
need() { [ $# -ge 2 ] || die "$1 needs a value"; }
