#!/usr/bin/env bash
# make verify-reproducible: build the committed HEAD twice, in two fresh
# checkouts (different directories, different times, empty caches), and
# compare every output byte for byte. On a mismatch, name the first
# differing file inside the first differing artifact.
#
# Uncommitted changes are not part of HEAD and so not part of this check.
set -euo pipefail
cd "$(dirname "$0")/.."
top=$PWD
commit=$(git rev-parse HEAD)
work=$(mktemp -d /tmp/rapbox-repro.XXXXXX)
cleanup() {
  for i in 1 2; do git -C "$top" worktree remove --force "$work/$i" >/dev/null 2>&1 || true; done
  rm -rf "$work"
}
trap cleanup EXIT

for i in 1 2; do
  echo "==> reproducible build $i of 2: $commit in $work/$i"
  git worktree add --detach "$work/$i" "$commit" >/dev/null
  # The npm tree is pinned by package-lock.json (integrity hashes): a
  # hard-linked copy, never a symlink (npm ci in the copy must not touch ours).
  cp -al "$top/node_modules" "$work/$i/node_modules"
  (cd "$work/$i" && ./build.sh rapd && ./build.sh image) > "$work/build-$i.log" 2>&1 || {
    tail -30 "$work/build-$i.log" >&2
    echo "verify-reproducible: build $i failed (log above)" >&2
    exit 1
  }
done

a=$work/1/out
b=$work/2/out
if cmp -s "$a/SHA256SUMS" "$b/SHA256SUMS"; then
  cat "$a/SHA256SUMS"
  echo "verify-reproducible: identical ($(wc -l < "$a/SHA256SUMS") artifacts, commit $commit)"
  exit 0
fi

echo "verify-reproducible: MISMATCH" >&2
diff "$a/SHA256SUMS" "$b/SHA256SUMS" >&2 || true
# Name the first differing file: the root filesystem, then the ESP.
if ! cmp -s "$a/build/root.img" "$b/build/root.img"; then
  unsquashfs -q -d "$work/root1" "$a/build/root.img" >/dev/null
  unsquashfs -q -d "$work/root2" "$b/build/root.img" >/dev/null
  # diff reports every device node as different; those are compared by the listing below.
  first=$(diff -rq --no-dereference "$work/root1" "$work/root2" | grep -v 'special file' | head -1 || true)
  if [[ -n $first ]]; then echo "first differing file in the root filesystem: $first" >&2
  else
    echo "root filesystem: same content; metadata differs:" >&2
    diff <(unsquashfs -lln "$a/build/root.img") <(unsquashfs -lln "$b/build/root.img") | head -5 >&2 || true
  fi
elif ! cmp -s "$a/build/esp.img" "$b/build/esp.img"; then
  echo "the ESP differs: $(cmp "$a/build/esp.img" "$b/build/esp.img" | head -1)" >&2
elif ! cmp -s "$a/rapd" "$b/rapd"; then
  echo "out/rapd differs: $(cmp "$a/rapd" "$b/rapd" | head -1)" >&2
fi
exit 1
