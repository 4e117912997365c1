#!/usr/bin/env bash
# Validates the Kubernetes manifests in deploy/k8s against the API schemas of a pinned
# Kubernetes version, strictly (unknown fields are errors), with PyPI's kubernetes-validate
# (pinned) in a virtual environment under ~/.cache, installed on first use. Where kubectl or
# kustomize is installed, also renders kustomization.yaml (with stand-in key and password files,
# in a temporary copy) and validates what it renders, generated Secrets included.
#
# Exit status: 0 valid; 1 a manifest is invalid; 3 the validator cannot be installed here (no
# python3 venv, no access to PyPI), so nothing was checked.
set -euo pipefail
cd "$(dirname "$0")/k8s"

kubernetes_version="${BACKROOM_KUBERNETES_VERSION:-1.33.0}"
validator_version=1.37.0
venv="${BACKROOM_KUBERNETES_VALIDATE_VENV:-$HOME/.cache/backroom-kubernetes-validate}"
validate="$venv/bin/kubernetes-validate"

if [[ ! -x "$validate" ]] || [[ "$("$validate" --version 2>/dev/null)" != "$validator_version" ]]; then
  echo "installing kubernetes-validate $validator_version into $venv" >&2
  if ! { python3 -m venv "$venv" && "$venv/bin/pip" install --quiet --disable-pip-version-check \
    "kubernetes-validate==$validator_version"; } >&2; then
    echo "cannot install kubernetes-validate $validator_version (python3 -m venv and PyPI needed)" >&2
    exit 3
  fi
fi
echo "kubernetes-validate $("$validate" --version), Kubernetes $kubernetes_version, strict"

manifests=()
for file in *.yaml; do
  [[ "$file" == kustomization.yaml ]] || manifests+=("$file")
done
"$validate" --strict --kubernetes-version "$kubernetes_version" "${manifests[@]}"

render=()
if command -v kubectl >/dev/null 2>&1; then
  render=(kubectl kustomize)
elif command -v kustomize >/dev/null 2>&1; then
  render=(kustomize build)
fi
if ((${#render[@]})); then
  copy="$(mktemp -d)"
  trap 'rm -rf "$copy"' EXIT
  cp -- *.yaml "$copy/"
  mkdir -p "$copy/pki" "$copy/secrets"
  # Stand-ins with the names kustomization.yaml expects (nothing reads their content here).
  for file in ca.pem ca.key model-signing.key store-tokens.key model-root.pub.pem model-keyset.json model-keyset.sig; do
    echo "stand-in" >"$copy/pki/$file"
  done
  printf 'POSTGRES_PASSWORD=stand-in\n' >"$copy/secrets/postgres.env"
  printf 'MINIO_ROOT_USER=stand-in\nMINIO_ROOT_PASSWORD=stand-in\n' >"$copy/secrets/object-store.env"
  "${render[@]}" "$copy" >"$copy/rendered.yaml"
  echo "rendered kustomization.yaml with ${render[*]}: $(grep -c '^kind:' "$copy/rendered.yaml") resources"
  "$validate" --strict --kubernetes-version "$kubernetes_version" "$copy/rendered.yaml"
else
  echo "kubectl and kustomize not found: kustomization.yaml not rendered"
fi
