// Package kubeapi runs a real Kubernetes API server (etcd v3.7.3 and
// kube-apiserver v1.37.2, built from the Go module proxy by build.sh, `make
// kube-binaries`) on 127.0.0.1 for tests, and installs the CRDs nodemesh
// reads: Istio's (shipped in the istio.io/api module) and SMI's (crds/smi.yaml).
//
// It sits beside the pipeline, not in it: tests of the Kubernetes source
// (config/kube) and of the deployment manifests (deploy/) use it to prove
// their work against the API server users run, not against a fake.
//
// Without the binaries, Start skips the test and says how to build them;
// with NODEMESH_REQUIRE_KUBE set (CI, after `make kube-binaries`) it fails
// instead.
package kubeapi
