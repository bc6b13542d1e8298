package config

import (
	"fmt"
	"strings"
)

// Kind is the kind of a stored object, e.g. KindVirtualService.
type Kind string

// The kinds nodemesh stores. Core kinds carry Kubernetes API types in
// Object.Spec (*corev1.Pod, *corev1.Service, *discoveryv1.EndpointSlice,
// *corev1.Namespace, *corev1.ServiceAccount); Istio kinds carry the istio.io/api
// spec message (*networkingv1alpha3.VirtualService,
// *securityv1beta1.AuthorizationPolicy, ...), whatever apiVersion the YAML used
// (v1, v1beta1 and v1alpha3 share one Go type).
const (
	KindNamespace      Kind = "Namespace"
	KindService        Kind = "Service"
	KindPod            Kind = "Pod"
	KindEndpointSlice  Kind = "EndpointSlice"
	KindServiceAccount Kind = "ServiceAccount"

	KindVirtualService  Kind = "VirtualService"
	KindDestinationRule Kind = "DestinationRule"
	KindGateway         Kind = "Gateway"
	KindServiceEntry    Kind = "ServiceEntry"
	KindSidecar         Kind = "Sidecar"

	KindPeerAuthentication    Kind = "PeerAuthentication"
	KindAuthorizationPolicy   Kind = "AuthorizationPolicy"
	KindRequestAuthentication Kind = "RequestAuthentication"
)

// Origin says where an object came from, for diagnostics.
type Origin struct {
	File string // path of the YAML file, or "k8s" for the API server
	Doc  int    // 0-based index of the YAML document in File
	Line int    // 1-based line where the document starts; 0 if unknown
}

func (o Origin) String() string {
	switch {
	case o.File == "":
		return ""
	case o.Line > 0:
		return fmt.Sprintf("%s:%d", o.File, o.Line)
	default:
		return fmt.Sprintf("%s#%d", o.File, o.Doc)
	}
}

// Key identifies an object in the store.
type Key struct {
	Kind      Kind
	Namespace string // empty for cluster-scoped kinds (Namespace)
	Name      string
}

func (k Key) String() string {
	if k.Namespace == "" {
		return string(k.Kind) + "/" + k.Name
	}
	return string(k.Kind) + "/" + k.Namespace + "/" + k.Name
}

// Object is one stored configuration object. Objects in a snapshot are
// shared and must be treated as read-only.
type Object struct {
	Key
	APIVersion  string
	Labels      map[string]string
	Annotations map[string]string
	Origin      Origin
	// Spec is the typed content; see the Kind constants for the Go types.
	Spec any
}

// Severity of a Diagnostic.
type Severity int

const (
	SeverityInfo Severity = iota
	SeverityWarning
	SeverityError
)

func (s Severity) String() string {
	switch s {
	case SeverityError:
		return "Error"
	case SeverityWarning:
		return "Warning"
	default:
		return "Info"
	}
}

// Diagnostic is a problem found in user configuration, by the loader or by
// the translator. It names the file, the object and the field, like
// `istioctl analyze` does.
type Diagnostic struct {
	Severity Severity
	Origin   Origin
	Object   Key    // may be partly empty when the object could not be decoded
	Field    string // dotted path, e.g. spec.http[0].route[1].destination.subset
	Message  string
}

func (d Diagnostic) String() string {
	var b strings.Builder
	b.WriteString(d.Severity.String())
	if o := d.Origin.String(); o != "" {
		b.WriteString(" [" + o + "]")
	}
	if d.Object.Kind != "" || d.Object.Name != "" {
		b.WriteString(" " + d.Object.String())
	}
	if d.Field != "" {
		b.WriteString(" " + d.Field)
	}
	b.WriteString(": " + d.Message)
	return b.String()
}

// Error makes a Diagnostic usable as an error.
func (d Diagnostic) Error() string { return d.String() }
