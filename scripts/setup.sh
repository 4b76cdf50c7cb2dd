#!/usr/bin/env bash
# Installs everything bifs' build, demo and tests need on a fresh Debian 12 machine (as root).
# Idempotent: skips apt when every package is already there (CI always refreshes first).
set -euo pipefail

PACKAGES=(
  cryptsetup-bin        # interop tests: luksFormat, luksDump, reencrypt, open --test-passphrase
  fuse3                 # fusermount3 for the FUSE mount
  qemu-utils            # qemu-img / qemu-io: qcow2 and LUKS1 test images
  python3-cryptography  # independent AES-XTS oracle in the interop tests
  libcryptsetup-dev     # libcryptsetup-rs (bifs verify)
  libssl-dev            # libcrypto: the copier's SHA-512 (src/sha512.rs)
  clang libclang-dev pkg-config  # bindgen for libcryptsetup-rs
  # The node image (scripts/image.sh) and its podman test (tests/it/node_image.rs):
  mmdebstrap buildah podman runc uidmap fuse-overlayfs slirp4netns
  netavark aardvark-dns containernetworking-plugins conmon golang-github-containers-common
  binutils              # readelf for image.sh
  chromium chromium-driver python3-selenium  # the Backing Image page in a real browser (tests/it/browser.rs)
  curl wget             # bifs serve tests: real HTTP clients
  python3-venv          # kubernetes-validate's venv (below)
  golang-go             # tests/longhorn_client: Longhorn's download client, built from Go's stdlib (tests/it/longhorn_download.rs)
  zsh fish              # `bifs completions zsh|fish` syntax-checked and loaded (tests/it/cli.rs)
  groff-base man-db     # `bifs man` rendered without warnings (tests/it/cli.rs)
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [[ ${#missing[@]} -gt 0 || "${CI:-}" == "true" ]]; then
  SUDO=""
  [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  echo "setup: apt-get install ${missing[*]:-(refresh)}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
fi

# qemu's curl block driver (qemu-img reading http://, tests/it/serve.rs) is a module in
# qemu-block-extra, which must match qemu-utils' version exactly: a newer qemu-utils from
# elsewhere is replaced by Debian's, pinned together (as scripts/vm/lib.sh does).
if [[ ! -e /usr/lib/x86_64-linux-gnu/qemu/block-curl.so ]]; then
  SUDO=""
  [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  ver=$(apt-cache policy qemu-block-extra | awk '/Candidate:/{print $2; exit}')
  echo "setup: apt-get install qemu-block-extra=$ver qemu-utils=$ver" >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends --allow-downgrades \
    "qemu-block-extra=$ver" "qemu-utils=$ver" >/dev/null
fi

# kubernetes-validate (PyPI; tests/it/deploy_manifests.rs), pinned with its dependencies, in its
# own venv of Debian's python3 (PEP 668: not into the system's site-packages).
KV_VENV=/opt/kubernetes-validate
KV_PINS="$(dirname "$0")/kubernetes-validate.txt"
KV_VERSION=$(sed -n 's/^kubernetes-validate==//p' "$KV_PINS")
if [[ "$("$KV_VENV/bin/kubernetes-validate" --version 2>/dev/null)" != "$KV_VERSION" ]]; then
  SUDO=""
  [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  echo "setup: kubernetes-validate $KV_VERSION into $KV_VENV" >&2
  $SUDO rm -rf "$KV_VENV"
  $SUDO /usr/bin/python3 -m venv "$KV_VENV"
  $SUDO "$KV_VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps -r "$KV_PINS"
  $SUDO ln -sf "$KV_VENV/bin/kubernetes-validate" /usr/local/bin/kubernetes-validate
fi

# REDbot (PyPI; tests/it/redbot.rs lints bifs serve's answers), pinned with its dependencies,
# in its own venv the same way. It has no --version: the venv's package metadata says it.
RB_VENV=/opt/redbot
RB_PINS="$(dirname "$0")/redbot.txt"
RB_VERSION=$(sed -n 's/^redbot==//p' "$RB_PINS")
if [[ "$("$RB_VENV/bin/python3" -c 'import importlib.metadata as m; print(m.version("redbot"))' 2>/dev/null)" != "$RB_VERSION" ]]; then
  SUDO=""
  [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  echo "setup: redbot $RB_VERSION into $RB_VENV" >&2
  $SUDO rm -rf "$RB_VENV"
  $SUDO /usr/bin/python3 -m venv "$RB_VENV"
  $SUDO "$RB_VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps -r "$RB_PINS"
  $SUDO ln -sf "$RB_VENV/bin/redbot" /usr/local/bin/redbot
fi

# kubectl renders deploy/ (`kubectl kustomize`, kustomize v5 built in). Debian's own
# kubernetes-client (1.20) is too old for deploy/'s kustomization, so it comes from
# Kubernetes' apt repository (pkgs.k8s.io) or Google's (package kubectl); scripts/test.sh
# refuses to run without it.
if ! kubectl version --client -o json 2>/dev/null | grep -q '"kustomizeVersion": "v5'; then
  echo "setup: *** kubectl with kustomize v5 not found: install kubectl >= 1.27 from" \
    "https://pkgs.k8s.io (see https://kubernetes.io/docs/tasks/tools/install-kubectl-linux/) ***" >&2
fi

command -v cargo >/dev/null || { echo "setup: cargo not found; install a Rust toolchain (rustup)" >&2; exit 1; }
# scripts/test.sh runs `cargo fmt --check` and `cargo clippy`.
for c in rustfmt clippy; do
  cargo "${c/rustfmt/fmt}" --version >/dev/null 2>&1 || rustup component add "$c"
done
