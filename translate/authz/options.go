package authz

import (
	"maps"
	"slices"
	"time"
)

// Defaults of Options.
const (
	DefaultTrustDomain   = "cluster.local"
	DefaultRootNamespace = "istio-system"
)

// Options configure the translation. The zero value is usable.
type Options struct {
	// TrustDomain of the mesh's SPIFFE IDs; DefaultTrustDomain when empty.
	TrustDomain string
	// RootNamespace holds mesh-wide policies; DefaultRootNamespace when empty.
	RootNamespace string
	// ExtAuthzProviders are the mesh config's extension providers, by name,
	// for CUSTOM policies.
	ExtAuthzProviders map[string]ExtAuthzProvider
	// ServiceSelector returns the pod selector of a Service, for policies
	// with targetRefs to a Service; nil: targetRefs select nothing.
	ServiceSelector func(namespace, name string) (selector map[string]string, ok bool)
}

// ExtAuthzProvider is an envoyExtAuthzGrpc or envoyExtAuthzHttp provider.
type ExtAuthzProvider struct {
	Cluster   string // Envoy cluster of the authorization service (required)
	Authority string // :authority for gRPC, host for HTTP; Cluster when empty
	GRPC      bool   // envoyExtAuthzGrpc; otherwise envoyExtAuthzHttp
	// URI is the HTTP service's URI (scheme and host), HTTP only;
	// "http://<Authority>" when empty.
	URI        string
	PathPrefix string        // HTTP only
	Timeout    time.Duration // 600s (Istio's default) when zero
	FailOpen   bool          // allow requests when the service fails
	// IncludeRequestHeadersInCheck lists the headers sent to an HTTP
	// service; gRPC services get them all.
	IncludeRequestHeadersInCheck []string
}

func (o Options) trustDomain() string {
	if o.TrustDomain == "" {
		return DefaultTrustDomain
	}
	return o.TrustDomain
}

func (o Options) rootNamespace() string {
	if o.RootNamespace == "" {
		return DefaultRootNamespace
	}
	return o.RootNamespace
}

func (o Options) providerNames() []string { return slices.Sorted(maps.Keys(o.ExtAuthzProviders)) }
