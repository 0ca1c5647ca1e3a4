#!/usr/bin/env bash
# Install the system packages of the given groups (deploy/system-packages.txt) that are
# missing: `apt-get update` once, then one `apt-get install -y`, only when something is
# missing and we are root on a system with apt-get. Otherwise print a warning naming
# what is missing and exit 0: the tests that need it skip locally (they fail under CI=true).
#
#   scripts/install-system-packages.sh test
#   scripts/install-system-packages.sh --check bench   # report only, never install
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
list=deploy/system-packages.txt

check_only=
if [[ ${1:-} == --check ]]; then
    check_only=1
    shift
fi
if [[ $# -eq 0 ]]; then
    echo "usage: $0 [--check] GROUP... (groups: see $list)" >&2
    exit 2
fi

# Known groups, so a typo in a Makefile fails instead of installing nothing.
known=" $(awk '!/^#/ && NF >= 2 {print $2}' "$list" | tr ',' '\n' | sort -u | tr '\n' ' ')"
for group in "$@"; do
    if [[ $known != *" $group "* ]]; then
        echo "$0: unknown group '$group' (known:$known)" >&2
        exit 2
    fi
done

# True when one of the package's commands or paths is there: sbin folders count even when
# they are not on PATH (nginx lives in /usr/sbin). A path need not be executable (a
# module's .so, a Lua file).
provided() {
    local item path
    for item in "$@"; do
        if [[ $item == /* ]]; then
            for path in $item; do
                [[ -e $path ]] && return 0
            done
        else
            command -v "$item" >/dev/null 2>&1 && return 0
            for path in /usr/local/sbin /usr/sbin /sbin; do
                [[ -x $path/$item ]] && return 0
            done
        fi
    done
    return 1
}

missing=()
while read -r package groups provides; do
    [[ -z $package || $package == \#* ]] && continue
    wanted=
    for group in "$@"; do
        [[ ",$groups," == *",$group,"* ]] && wanted=1
    done
    [[ -n $wanted ]] || continue
    # Word splitting of $provides is wanted (one argument per item); globs expand later.
    set -f
    # shellcheck disable=SC2086
    items=($provides)
    set +f
    if ! provided "${items[@]}"; then
        missing+=("$package")
    fi
done <"$list"

if [[ ${#missing[@]} -eq 0 ]]; then
    exit 0
fi
if [[ -z $check_only && $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "installing system packages for $*: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Wait for another apt-get instead of failing at once on its lock.
    apt_options=(-q -o DPkg::Lock::Timeout=300)
    apt-get "${apt_options[@]}" update
    apt-get "${apt_options[@]}" install -y --no-install-recommends "${missing[@]}"
    exit 0
fi
reason="not root, or no apt-get"
[[ -n $check_only ]] && reason="--check"
echo "warning: system packages missing for $*: ${missing[*]} ($reason)." \
    "Install them with: apt-get install ${missing[*]}" >&2
