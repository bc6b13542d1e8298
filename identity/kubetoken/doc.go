// Package kubetoken connects meshd's built-in CA to Kubernetes for the node
// agents' first certificate.
//
// In: Authenticator implements identity.TokenAuthenticator with the
// TokenReview API. A mesh-agent pod presents a projected service account
// token (audience "nodemesh") as the bearer token of its first
// CreateCertificate call; the API server vouches that it is a live token of
// the agents' ServiceAccount bound to a pod, and names the node that pod is
// scheduled on (the authentication.kubernetes.io/node-name extra, on by
// default: no feature gate with kube-apiserver 1.37.2). The agent identity
// is then signed bound to that node, so a token stolen from node A yields a
// certificate for node A only, and the token dies with its pod.
//
// Out: BundlePublisher keeps the CA's trust bundle in a ConfigMap
// (root-cert.pem), which the agents mount to verify meshd before they have
// a certificate of their own.
//
// The package sits beside the pipeline, between identity (the CA and
// CertService) and cmd/meshd, which wires it when running with --kube. It
// logs only through the Logger its Config is given.
package kubetoken
