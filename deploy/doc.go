// Package deploy holds what runs nodemesh in a Kubernetes cluster, outside
// the Go pipeline: the Helm chart (helm/nodemesh: meshd Deployment with its
// PodDisruptionBudget, RBAC and Services; mesh-agent DaemonSet; the CA Secret
// reference and SPIRE mode) and the manifests rendered from it with default
// values (manifests/nodemesh.yaml, for `kubectl apply` without Helm).
//
// It has no Go API. Its tests render the chart with the Helm Go SDK, check
// that manifests/nodemesh.yaml is the chart's current output (refresh with
// NODEMESH_UPDATE_MANIFESTS=1 go test ./deploy/), and apply the objects to a
// real kube-apiserver (e2e/kubeapi), where meshd's RBAC is proven sufficient
// by running the Kubernetes source (config/kube) under meshd's own
// ServiceAccount.
package deploy
