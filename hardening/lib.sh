# hardening/lib.sh: sourced by every rule's check, fix and fixture (POSIX sh).
#
#   . "$(dirname "$0")/../lib.sh"
#   hardening_root "$@"      # sets $root (the tree to judge or change) and $here
#
# The tree is $1 or $HARDENING_ROOT. It is never the host's / unless
# HARDENING_ALLOW_HOST_ROOT=1 (an audit run inside the booted box): a check
# run by mistake on the build host must not judge the host, and a fix must
# never change it.
# Exit codes of a check: 0 pass, 1 fail, 2 not applicable; 3 is a usage or
# internal error (so it can never be taken for a verdict).

die() {
  echo "error: $*" >&2
  exit 3
}

hardening_root() {
  root=${1:-${HARDENING_ROOT:-}}
  [ -n "$root" ] || die "usage: $0 ROOT (or set HARDENING_ROOT)"
  [ -d "$root" ] || die "root tree '$root' is not a directory"
  root=$(cd "$root" && pwd -P)
  if [ "$root" = / ] && [ "${HARDENING_ALLOW_HOST_ROOT:-}" != 1 ]; then
    die "refusing to run on the host's / (set HARDENING_ALLOW_HOST_ROOT=1 inside the box)"
  fi
  here=$(cd "$(dirname "$0")" && pwd -P)
  failed=0
}

# A check reports every finding (one line each), then exits with verdict.
fail() {
  echo "$*"
  failed=1
}
verdict() {
  exit "$failed"
}

# Octal permission bits of a path (no file type), e.g. 640.
mode_of() {
  stat -c %a "$1"
}
uid_of() {
  stat -c %u "$1"
}

# True when mode $1 (octal) has none of the bits in $2 (octal).
mode_lacks() {
  [ $((0$1 & 0$2)) -eq 0 ]
}

# Effective value of a sysctl key in the tree, as systemd-sysctl computes it:
# every *.conf from the sysctl.d directories, a name in /etc hiding the same
# name further down, read in file-name order, the last assignment winning.
sysctl_files() {
  for d in etc/sysctl.d run/sysctl.d usr/local/lib/sysctl.d usr/lib/sysctl.d; do
    [ -d "$root/$d" ] || continue
    for f in "$root/$d"/*.conf; do
      [ -e "$f" ] && printf '%s %s\n' "${f##*/}" "$f"
    done
  done | awk '!seen[$1]++' | sort -k1,1 | cut -d' ' -f2-
}
sysctl_value() {
  key=$(printf '%s' "$1" | tr / .)
  sysctl_files | while IFS= read -r f; do cat "$f"; echo; done |
    awk -v key="$key" '
      /^[ \t]*[#;]/ { next }
      {
        line = $0; sub(/^[ \t]*-?/, "", line)
        i = index(line, "="); if (i == 0) next
        k = substr(line, 1, i - 1); v = substr(line, i + 1)
        gsub(/[ \t]/, "", k); gsub(/\//, ".", k)
        gsub(/^[ \t]+|[ \t]+$/, "", v)
        if (k == key) val = v
      }
      END { if (val != "") print val }'
}

# Rules that set sysctls keep their wanted values in settings.conf (plain
# "key = value" lines): the check compares, the fix installs that very file.
sysctl_check() {
  while IFS= read -r line; do
    case $line in '#'* | '') continue ;; esac
    k=$(printf '%s' "${line%%=*}" | tr -d ' \t')
    want=$(printf '%s' "${line#*=}" | sed 's/^[ \t]*//; s/[ \t]*$//')
    have=$(sysctl_value "$k")
    [ "$have" = "$want" ] || fail "$k is '${have:-unset}', want '$want'"
  done <"$here/settings.conf"
}
sysctl_fix() {
  mkdir -p "$root/usr/lib/sysctl.d"
  install -m 0644 "$here/settings.conf" "$root/usr/lib/sysctl.d/$1"
}

# Value of KEY in a systemd-style INI setting across a main file and its
# drop-in directories (later drop-ins win, /etc hides same names), e.g.
#   ini_value Storage etc/systemd/journald.conf journald.conf.d
ini_value() {
  key=$1 main=$2 dropdir=$3
  {
    [ -f "$root/$main" ] && cat "$root/$main"
    for d in etc/systemd run/systemd usr/local/lib/systemd usr/lib/systemd; do
      [ -d "$root/$d/$dropdir" ] || continue
      for f in "$root/$d/$dropdir"/*.conf; do
        [ -e "$f" ] && printf '%s %s\n' "${f##*/}" "$f"
      done
    done | awk '!seen[$1]++' | sort -k1,1 | cut -d' ' -f2- | while IFS= read -r f; do cat "$f"; echo; done
  } | awk -v key="$key" '
      /^[ \t]*[#;]/ { next }
      { i = index($0, "="); if (i == 0) next
        k = substr($0, 1, i - 1); gsub(/[ \t]/, "", k)
        v = substr($0, i + 1); gsub(/^[ \t]+|[ \t]+$/, "", v)
        if (k == key) val = v }
      END { print val }'
}

# Enablement symlinks in the tree's /etc/systemd/system, one "UNIT LINK" per
# line: UNIT is the unit enabled (for an alias, the unit it points to).
# default.target (set-default) and masks (-> /dev/null) are not enablement.
enablement_links() {
  d=$root/etc/systemd/system
  [ -d "$d" ] || return 0
  find "$d" -mindepth 2 -maxdepth 2 -type l \( -path '*.wants/*' -o -path '*.requires/*' -o -path '*.upholds/*' \) |
    sort | while IFS= read -r l; do printf '%s %s\n' "${l##*/}" "$l"; done
  find "$d" -mindepth 1 -maxdepth 1 -type l ! -name default.target | sort | while IFS= read -r l; do
    t=$(readlink "$l")
    [ "$t" = /dev/null ] && continue
    printf '%s %s\n' "${t##*/}" "$l"
  done
}
enabled_units() {
  enablement_links | cut -d' ' -f1 | sort -u
}
