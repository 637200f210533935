#!/usr/bin/env bash
# Build the local cluster's binaries from pinned Go modules into a cache outside the repo.
#
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubectl  (k8s.io/kubernetes)
#   etcd                                                              (go.etcd.io/etcd/server/v3)
#   kwok, kwokctl                                                     (sigs.k8s.io/kwok)
#   helm                                                              (helm.sh/helm/v3)
#
# The pins live in cluster/tools/*/go.mod and go.sum. A group is rebuilt only when its pins
# or this script change (a stamp file records their hash), so a warm run takes seconds.
# Usage: cluster/build-binaries.sh [--force]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
home="${BATCHPILOT_HOME:-$HOME/.cache/batchpilot}"
bin="$home/bin"
force="${1:-}"
mkdir -p "$bin"

export CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-mod=readonly

# The version of a module as pinned in one tools module.
pinned() { (cd "$here/tools/$1" && go list -m -f '{{.Version}}' "$2"); }

# build GROUP LDFLAGS BINARY=PACKAGE...
build() {
    local group="$1" ldflags="$2"; shift 2
    local stamp="$bin/.stamp-$group" want missing=0 spec
    want="$(cat "$here/tools/$group/go.mod" "$here/tools/$group/go.sum" "${BASH_SOURCE[0]}" | sha256sum | cut -c1-16)"
    for spec in "$@"; do [[ -x "$bin/${spec%%=*}" ]] || missing=1; done
    if [[ "$force" != "--force" && $missing == 0 && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        echo "cluster binaries: $group up to date"
        return
    fi
    echo "cluster binaries: building $group ..."
    local start=$SECONDS
    for spec in "$@"; do
        (cd "$here/tools/$group" && go build -trimpath -ldflags "-s -w $ldflags" -o "$bin/${spec%%=*}" "${spec#*=}")
    done
    echo "$want" > "$stamp"
    echo "cluster binaries: $group built in $((SECONDS - start))s"
}

kube="$(pinned kubernetes k8s.io/kubernetes)"           # v1.36.N
kube_minor="$(echo "$kube" | cut -d. -f2)"
kube_ld=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    kube_ld+=" -X $pkg.gitVersion=$kube -X $pkg.gitMajor=1 -X $pkg.gitMinor=$kube_minor"
    kube_ld+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
build kubernetes "$kube_ld" \
    kube-apiserver=k8s.io/kubernetes/cmd/kube-apiserver \
    kube-controller-manager=k8s.io/kubernetes/cmd/kube-controller-manager \
    kube-scheduler=k8s.io/kubernetes/cmd/kube-scheduler \
    kubectl=k8s.io/kubernetes/cmd/kubectl

build etcd "" etcd=go.etcd.io/etcd/server/v3

kwok="$(pinned kwok sigs.k8s.io/kwok)"
build kwok "-X sigs.k8s.io/kwok/pkg/consts.Version=${kwok#v}" \
    kwok=sigs.k8s.io/kwok/cmd/kwok \
    kwokctl=sigs.k8s.io/kwok/cmd/kwokctl

helm="$(pinned helm helm.sh/helm/v3)"
build helm "-X helm.sh/helm/v3/internal/version.version=$helm" helm=helm.sh/helm/v3/cmd/helm

echo "cluster binaries: ready in $bin"
