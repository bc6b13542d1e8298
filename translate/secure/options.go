package secure

import (
	"errors"
	"fmt"
	"strconv"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// DefaultRootNamespace is where mesh-wide policies live, as in Istio.
const DefaultRootNamespace = "istio-system"

// DefaultCertProviderInstance is the gRPC certificate provider instance
// proxyless clients are told to use when Options does not name one.
const DefaultCertProviderInstance = "default"

// Options configure Apply. The zero value is not usable: TrustDomain is
// required.
type Options struct {
	// TrustDomain of every workload identity, e.g. cluster.local.
	TrustDomain spiffeid.TrustDomain
	// RootNamespace holds mesh-wide PeerAuthentication; default istio-system.
	RootNamespace string
	// CertProviderInstance is the gRPC bootstrap certificate provider
	// instance (identity and roots) used for ProxylessGRPC clients;
	// default "default".
	CertProviderInstance string
	// PerAccountClusters copies every cluster (and route configuration)
	// per service account that reaches it instead of selecting the
	// account's transport socket in one cluster: for Envoy older than
	// 1.38, which has no envoy.hashable_string filter state object to key
	// upstream connection pools by the source identity. Many times the
	// clusters; see the package documentation.
	PerAccountClusters bool
}

// Validate reports missing or malformed options.
func (o Options) Validate() error {
	if o.TrustDomain.IsZero() {
		return errors.New("secure options: trust domain is required")
	}
	return nil
}

func (o Options) withDefaults() Options {
	if o.RootNamespace == "" {
		o.RootNamespace = DefaultRootNamespace
	}
	if o.CertProviderInstance == "" {
		o.CertProviderInstance = DefaultCertProviderInstance
	}
	return o
}

// ReservedNamespace holds nodemesh's own identities: meshd's
// spiffe://<td>/ns/nodemesh-system/sa/meshd and the node agents' .../sa/
// mesh-agent (identity.AgentNamespace, which this pure package cannot
// import). Its pods get no workload identity from the mesh: a node running
// a pod there would otherwise be handed meshd's key over SDS.
const ReservedNamespace = "nodemesh-system"

// ErrReservedNamespace is WorkloadID's error for ReservedNamespace.
var ErrReservedNamespace = errors.New("namespace " + ReservedNamespace + " holds nodemesh's own identities; its pods get no workload identity")

// WorkloadID is spiffe://<td>/ns/<namespace>/sa/<serviceAccount> (the
// same form as identity.WorkloadID, which this pure package cannot import),
// or ErrReservedNamespace.
func WorkloadID(td spiffeid.TrustDomain, namespace, serviceAccount string) (spiffeid.ID, error) {
	if namespace == ReservedNamespace {
		return spiffeid.ID{}, ErrReservedNamespace
	}
	if serviceAccount == "" {
		serviceAccount = "default"
	}
	id, err := spiffeid.FromSegments(td, "ns", namespace, "sa", serviceAccount)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("workload identity of %s/%s: %w", namespace, serviceAccount, err)
	}
	return id, nil
}

// SecretName is the SDS name of a workload's certificate and key: its
// SPIFFE ID.
func SecretName(id spiffeid.ID) string { return id.String() }

// BundleSecretName is the SDS name of the trust bundle (validation
// context) of a trust domain: spiffe://<td>.
func BundleSecretName(td spiffeid.TrustDomain) string { return td.IDString() }

func portString(p uint32) string { return strconv.FormatUint(uint64(p), 10) }
