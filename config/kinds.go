package config

import (
	"reflect"
	"strings"

	"google.golang.org/protobuf/proto"
	networkingv1alpha3 "istio.io/api/networking/v1alpha3"
	securityv1beta1 "istio.io/api/security/v1beta1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// API groups nodemesh reads. A kind of one of these groups with an apiVersion
// not listed in kindTable is an error (the user meant a kind we support);
// anything else unknown is reported as unsupported.
const (
	groupCore       = ""
	groupDiscovery  = "discovery.k8s.io"
	groupNetworking = "networking.istio.io"
	groupSecurity   = "security.istio.io"
)

// kindInfo says how to decode one (group, kind).
type kindInfo struct {
	kind     Kind
	versions []string
	// Exactly one of newCore, newIstio and newSMI is set.
	newCore  func() metav1.Object // whole object, strict JSON
	newIstio func() proto.Message // spec only, protojson
	newSMI   func() smiSpec       // spec only, strict JSON (decode_smi.go)
}

type groupKind struct{ group, kind string }

var kindTable = mergeKinds(smiKinds, map[groupKind]kindInfo{
	{groupCore, "Namespace"}:      {kind: KindNamespace, versions: []string{"v1"}, newCore: func() metav1.Object { return new(corev1.Namespace) }},
	{groupCore, "Service"}:        {kind: KindService, versions: []string{"v1"}, newCore: func() metav1.Object { return new(corev1.Service) }},
	{groupCore, "Pod"}:            {kind: KindPod, versions: []string{"v1"}, newCore: func() metav1.Object { return new(corev1.Pod) }},
	{groupCore, "ServiceAccount"}: {kind: KindServiceAccount, versions: []string{"v1"}, newCore: func() metav1.Object { return new(corev1.ServiceAccount) }},
	{groupDiscovery, "EndpointSlice"}: {kind: KindEndpointSlice, versions: []string{"v1"},
		newCore: func() metav1.Object { return new(discoveryv1.EndpointSlice) }},

	{groupNetworking, "VirtualService"}: {kind: KindVirtualService, versions: networkingVersions,
		newIstio: func() proto.Message { return new(networkingv1alpha3.VirtualService) }},
	{groupNetworking, "DestinationRule"}: {kind: KindDestinationRule, versions: networkingVersions,
		newIstio: func() proto.Message { return new(networkingv1alpha3.DestinationRule) }},
	{groupNetworking, "Gateway"}: {kind: KindGateway, versions: networkingVersions,
		newIstio: func() proto.Message { return new(networkingv1alpha3.Gateway) }},
	{groupNetworking, "ServiceEntry"}: {kind: KindServiceEntry, versions: networkingVersions,
		newIstio: func() proto.Message { return new(networkingv1alpha3.ServiceEntry) }},
	{groupNetworking, "Sidecar"}: {kind: KindSidecar, versions: networkingVersions,
		newIstio: func() proto.Message { return new(networkingv1alpha3.Sidecar) }},

	{groupSecurity, "PeerAuthentication"}: {kind: KindPeerAuthentication, versions: securityVersions,
		newIstio: func() proto.Message { return new(securityv1beta1.PeerAuthentication) }},
	{groupSecurity, "AuthorizationPolicy"}: {kind: KindAuthorizationPolicy, versions: securityVersions,
		newIstio: func() proto.Message { return new(securityv1beta1.AuthorizationPolicy) }},
	{groupSecurity, "RequestAuthentication"}: {kind: KindRequestAuthentication, versions: securityVersions,
		newIstio: func() proto.Message { return new(securityv1beta1.RequestAuthentication) }},
})

// mergeKinds adds the kinds of more to base (the SMI kinds live in
// decode_smi.go).
func mergeKinds(more, base map[groupKind]kindInfo) map[groupKind]kindInfo {
	for gk, info := range more {
		base[gk] = info
	}
	return base
}

var (
	networkingVersions = []string{"v1", "v1beta1", "v1alpha3"}
	securityVersions   = []string{"v1", "v1beta1"}
)

// specTypes is the Go type of Object.Spec for each kind.
var specTypes = func() map[Kind]reflect.Type {
	m := make(map[Kind]reflect.Type, len(kindTable))
	for _, info := range kindTable {
		switch {
		case info.newCore != nil:
			m[info.kind] = reflect.TypeOf(info.newCore())
		case info.newSMI != nil:
			m[info.kind] = reflect.TypeOf(info.newSMI())
		default:
			m[info.kind] = reflect.TypeOf(info.newIstio())
		}
	}
	return m
}()

// splitAPIVersion splits "group/version" ("v1" is the core group).
func splitAPIVersion(apiVersion string) (group, version string) {
	if i := strings.LastIndexByte(apiVersion, '/'); i >= 0 {
		return apiVersion[:i], apiVersion[i+1:]
	}
	return groupCore, apiVersion
}

// Namespaced reports whether objects of kind k live in a namespace.
func (k Kind) Namespaced() bool { return k != KindNamespace }
