#!/usr/bin/env bash
# Renders the plain manifests in this directory from the Helm chart, with the
# chart's default values, for clusters installed without Helm:
#
#   deploy/kubernetes/render.sh [OUTPUT_DIR]     # default: deploy/kubernetes
#
# helm comes from target/k8s-tools (`cargo xtask setup` installs it) unless $HELM
# names another. tests/tests/k8s_manifests.rs re-renders into a temporary directory
# and fails if the committed files differ: after changing the chart, run this.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
out="${1:-$root/deploy/kubernetes}"
helm="${HELM:-$root/target/k8s-tools/bin/helm}"
if [[ ! -x "$helm" ]]; then
    echo "render.sh: $helm not found; run \`cargo xtask setup\` (or set HELM)" >&2
    exit 1
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$helm" template airlock "$root/deploy/helm/airlock" \
    --namespace airlock-system \
    --set namespace.create=true \
    --kube-version 1.30.0 \
    --output-dir "$tmp" >/dev/null
mkdir -p "$out"
# Numbered so that `kubectl apply -f deploy/kubernetes/` creates the namespace first.
for file in 00-namespace 10-serviceaccount 20-configmap 30-daemonset; do
    src="$tmp/airlock/templates/${file#*-}.yaml"
    [[ -s "$src" ]] || { echo "render.sh: the chart rendered no ${file#*-}.yaml" >&2; exit 1; }
    {
        echo "# Generated from deploy/helm/airlock (default values) by deploy/kubernetes/render.sh."
        echo "# Do not edit: change the chart and re-run the script."
        cat "$src"
    } >"$out/$file.yaml"
done
