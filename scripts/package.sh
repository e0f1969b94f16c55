#!/usr/bin/env bash
# Builds dist/sophia-functions.zip, the Function App's deployment package: host.json,
# functions/*/function.json and the `sophia` executable at the root (host.json's
# defaultExecutablePath). The executable is linked against an old glibc with cargo-zigbuild
# (its `zig` from PyPI's ziglang), so it starts on the Functions Linux image; the script
# refuses a binary that needs a newer glibc than SOPHIA_GLIBC_MAX or a shared library the
# image may not have.
#
#   scripts/package.sh                      build (release) and package
#   SOPHIA_PACKAGE_BINARY=path scripts/package.sh   package an existing binary (checked the same way)
#
# Settings: SOPHIA_GLIBC_MAX (default 2.28: Debian 10 and newer, RHEL 8 and newer; the
# Functions v4 Linux images are newer), SOPHIA_PACKAGE_OUT (default dist/sophia-functions.zip),
# SOPHIA_ZIP_LEVEL (deflate level, default 9: a smaller package downloads faster at a cold start).
set -euo pipefail
cd "$(dirname "$0")/.."

glibc_max="${SOPHIA_GLIBC_MAX:-2.28}"
out="${SOPHIA_PACKAGE_OUT:-dist/sophia-functions.zip}"
target=x86_64-unknown-linux-gnu

fail() { echo "package.sh: $*" >&2; exit 1; }

if [[ -n "${SOPHIA_PACKAGE_BINARY:-}" ]]; then
  bin="$SOPHIA_PACKAGE_BINARY"
  [[ -x "$bin" ]] || fail "SOPHIA_PACKAGE_BINARY=$bin is not an executable file"
else
  command -v cargo-zigbuild >/dev/null || fail "cargo-zigbuild is missing: cargo install cargo-zigbuild --locked"
  if ! command -v zig >/dev/null && ! python3 -c 'import ziglang' 2>/dev/null; then
    fail "zig is missing: pip install ziglang (cargo-zigbuild runs it as python3 -m ziglang)"
  fi
  echo "== cargo zigbuild --release --target $target.$glibc_max"
  cargo zigbuild --release --locked --target "$target.$glibc_max"
  bin="target/$target/release/sophia"
fi

command -v objdump >/dev/null || fail "objdump is missing (Debian: binutils)"
file_kind=$(objdump -f "$bin" | sed -n 's/.*file format //p' | head -1)
[[ "$file_kind" == "elf64-x86-64" ]] || fail "$bin is '$file_kind', not an x86-64 ELF executable"

# The highest GLIBC_x.y symbol version the executable needs.
needed=$(objdump -T "$bin" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)
[[ -n "$needed" ]] || fail "$bin references no versioned glibc symbol (is it dynamically linked?)"
highest=$(printf '%s\n%s\n' "$needed" "$glibc_max" | sort -V | tail -1)
if [[ "$highest" != "$glibc_max" ]]; then
  fail "$bin needs GLIBC_$needed, newer than the ceiling GLIBC_$glibc_max: build with cargo zigbuild --target $target.$glibc_max (or raise SOPHIA_GLIBC_MAX only for an image whose glibc is that new)"
fi
echo "glibc: needs GLIBC_$needed (ceiling GLIBC_$glibc_max)"

# Shared libraries: only glibc's own and libgcc_s, which every image has.
allowed='^(libc\.so\.6|libm\.so\.6|libpthread\.so\.0|libdl\.so\.2|librt\.so\.1|libgcc_s\.so\.1|ld-linux-x86-64\.so\.2)$'
while read -r lib; do
  [[ "$lib" =~ $allowed ]] || fail "$bin links $lib, which the Functions image may not have"
done < <(objdump -p "$bin" | awk '$1 == "NEEDED" { print $2 }')
echo "shared libraries: $(objdump -p "$bin" | awk '$1 == "NEEDED" { printf "%s ", $2 }')"

# The package: host.json, functions/<name>/function.json, sophia (mode 0755).
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
cp host.json "$stage/"
mkdir "$stage/functions"
for dir in functions/*/; do
  name=$(basename "$dir")
  [[ -f "$dir/function.json" ]] || fail "$dir has no function.json"
  mkdir "$stage/$name"
  cp "$dir/function.json" "$stage/$name/"
done
rmdir "$stage/functions"
install -m 0755 "$bin" "$stage/sophia"
mkdir -p "$(dirname "$out")"
rm -f "$out"
out_abs="$(cd "$(dirname "$out")" && pwd)/$(basename "$out")"
(cd "$stage" && zip -q -X "-${SOPHIA_ZIP_LEVEL:-9}" -r "$out_abs" host.json sophia ./*/function.json)

# The listing the Functions host expects: one folder per function at the root.
listing=$(unzip -Z1 "$out")
grep -qx 'host.json' <<<"$listing" || fail "the package lacks host.json"
grep -qx 'sophia' <<<"$listing" || fail "the package lacks the sophia executable"
[[ "$(unzip -Z "$out" sophia | awk '{print $1}')" == -rwx* ]] || fail "sophia is not executable in the package"
for dir in functions/*/; do
  name=$(basename "$dir")
  grep -qx "$name/function.json" <<<"$listing" || fail "the package lacks $name/function.json"
done
extra=$(grep -vxE 'host\.json|sophia|[A-Za-z0-9_-]+/|[A-Za-z0-9_-]+/function\.json' <<<"$listing" || true)
[[ -z "$extra" ]] || fail "unexpected entries in the package: $extra"
echo "wrote $out ($(du -h "$out" | cut -f1)): $(grep -c 'function.json' <<<"$listing") functions, host.json, sophia"
