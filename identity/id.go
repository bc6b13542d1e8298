package identity

import (
	"errors"
	"fmt"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// DefaultTrustDomain is the trust domain used when a Config leaves it empty,
// the same default as Istio and Kubernetes (cluster.local).
var DefaultTrustDomain = spiffeid.RequireTrustDomainFromString("cluster.local")

const (
	// AgentNamespace and AgentServiceAccount name the node agent's identity:
	// spiffe://<td>/ns/nodemesh-system/sa/mesh-agent.
	AgentNamespace      = "nodemesh-system"
	AgentServiceAccount = "mesh-agent"
)

// ErrNotWorkloadID is returned by ParseWorkloadID for a SPIFFE ID whose path
// is not /ns/<namespace>/sa/<serviceaccount>.
var ErrNotWorkloadID = errors.New("not a workload SPIFFE ID (want /ns/<namespace>/sa/<serviceaccount>)")

// WorkloadID returns spiffe://<td>/ns/<namespace>/sa/<serviceAccount>. A zero
// td means DefaultTrustDomain. Namespace and service account must be
// non-empty, valid path segments (Kubernetes names always are).
func WorkloadID(td spiffeid.TrustDomain, namespace, serviceAccount string) (spiffeid.ID, error) {
	if td.IsZero() {
		td = DefaultTrustDomain
	}
	if namespace == "" {
		return spiffeid.ID{}, errors.New("workload id: empty namespace")
	}
	if serviceAccount == "" {
		return spiffeid.ID{}, fmt.Errorf("workload id: namespace %q: empty service account", namespace)
	}
	id, err := spiffeid.FromSegments(td, "ns", namespace, "sa", serviceAccount)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("workload id for %s/%s: %w", namespace, serviceAccount, err)
	}
	return id, nil
}

// ParseWorkloadID returns the namespace and service account of a workload
// SPIFFE ID. Any other path yields ErrNotWorkloadID.
func ParseWorkloadID(id spiffeid.ID) (namespace, serviceAccount string, err error) {
	if id.IsZero() {
		return "", "", fmt.Errorf("parse workload id: %w: zero id", ErrNotWorkloadID)
	}
	seg := strings.Split(strings.TrimPrefix(id.Path(), "/"), "/")
	if len(seg) != 4 || seg[0] != "ns" || seg[2] != "sa" || seg[1] == "" || seg[3] == "" {
		return "", "", fmt.Errorf("parse workload id %q: %w", id, ErrNotWorkloadID)
	}
	return seg[1], seg[3], nil
}

// AgentID returns the node agent's identity in td (zero means
// DefaultTrustDomain): spiffe://<td>/ns/nodemesh-system/sa/mesh-agent. Every
// node agent shares it; which node an agent runs on is bound separately, in
// its certificate's Subject common name (see CA.SignAgentCSR and AgentNode).
func AgentID(td spiffeid.TrustDomain) spiffeid.ID {
	id, err := WorkloadID(td, AgentNamespace, AgentServiceAccount)
	if err != nil {
		// Constant, valid segments: cannot fail for a valid trust domain.
		panic(fmt.Sprintf("identity: agent id: %v", err))
	}
	return id
}
