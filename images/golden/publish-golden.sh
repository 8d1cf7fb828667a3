#!/usr/bin/env bash
# Golden-image pipeline step: from a freshly built WIM to a verified GoldenImage manifest
# committed to the GitOps repository. It uses only recastctl (and git to commit); the WIM
# itself is uploaded to the URL by your artifact step, before or after this one.
#
#   publish-golden.sh WIM NAME URL [options]
#
#   --min-build B     lowest acceptable build.UBR (default: what the image proves)
#   --kb KB           a KB the image must contain (repeatable)
#   --edition E       expected EDITIONID (e.g. Enterprise)
#   --index N         image index inside the WIM (default 1)
#   --channel C       channel to publish to (stable, canary; repeatable)
#   --repo DIR        GitOps checkout to commit into (default: .)
#   --dir SUBDIR      directory for manifests inside the repo (default: golden-images)
#   --no-commit       write the manifest but do not commit
#
# Exit codes are recastctl's, so the CI system can branch on them:
#   0 published; 2 bad usage / unreadable file; 3 not a valid WIM; 4 bytes wrong (sha256 or
#   integrity table); 5 the image does not meet the requirements; 1 anything else.
set -euo pipefail

RECASTCTL=${RECASTCTL:-recastctl}

usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[[ $# -ge 3 ]] || usage
wim=$1 name=$2 url=$3
shift 3

verify_args=() manifest_args=() index=1 repo=. subdir=golden-images commit=1
while [[ $# -gt 0 ]]; do
  case $1 in
    --min-build) verify_args+=(--min-build "$2"); manifest_args+=(--min-build "$2"); shift 2 ;;
    --kb) verify_args+=(--kb "$2"); manifest_args+=(--kb "$2"); shift 2 ;;
    --edition) verify_args+=(--edition "$2"); shift 2 ;;
    --index) index=$2; shift 2 ;;
    --channel) manifest_args+=(--channel "$2"); shift 2 ;;
    --repo) repo=$2; shift 2 ;;
    --dir) subdir=$2; shift 2 ;;
    --no-commit) commit=0; shift ;;
    -h|--help) usage ;;
    *) echo "unknown option $1" >&2; usage ;;
  esac
done

echo "== inspect"
"$RECASTCTL" image inspect "$wim"

echo "== verify (sha256, integrity table, servicing packages of image $index)"
set +e
"$RECASTCTL" image verify "$wim" --index "$index" "${verify_args[@]}"
rc=$?
set -e
case $rc in
  0) ;;
  3) echo "REFUSED: $wim is not a valid WIM (truncated or damaged); rebuild or copy it again" >&2; exit 3 ;;
  4) echo "REFUSED: $wim's bytes fail their integrity table; copy it again" >&2; exit 4 ;;
  5) echo "REFUSED: image $index does not meet the requirements; service it and rebuild" >&2; exit 5 ;;
  *) echo "verification could not run (exit $rc)" >&2; exit "$rc" ;;
esac

echo "== manifest"
mkdir -p "$repo/$subdir"
out="$repo/$subdir/$name.yaml"
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
"$RECASTCTL" image manifest "$wim" --url "$url" --name "$name" --index "$index" "${manifest_args[@]}" > "$tmp"
# The same admission rules the API applies, offline.
"$RECASTCTL" validate -f "$tmp" >/dev/null
mv "$tmp" "$out"
trap - EXIT
echo "wrote $out"

if [[ $commit == 1 ]]; then
  sha=$(sed -n 's/^  sha256: //p' "$out")
  build=$(sed -n 's/^    minimumBuild: //p' "$out" | tr -d "'\"")
  git -C "$repo" add "$subdir/$name.yaml"
  git -C "$repo" commit -q -m "golden image $name: build $build, sha256 $sha" -- "$subdir/$name.yaml"
  echo "committed $subdir/$name.yaml"
fi
