package translate

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"hash"
	"strconv"
	"sync"
	"sync/atomic"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/proto"
	networking "istio.io/api/networking/v1alpha3"
)

// A node proxy serves many namespaces, and most namespaces see the mesh
// alike (no Sidecar, no exportTo restriction, no namespace-local
// VirtualService or DestinationRule): their outbound route configurations
// would be identical but for the short names of their own services. So each
// namespace's outbound listener routes:
//
//   - connections to the VIPs of its own services through a small local
//     route configuration, outbound_<ns>_<port>, holding those services with
//     their short names;
//   - every other HTTP connection through a route configuration shared by
//     all namespaces with the same view of the mesh: outbound_<port> for the
//     view of a namespace without any objects of its own (the mesh
//     default), outbound_<port>~<hash> for others, the hash being that of
//     the view (see viewKey), not of the content, so a route change keeps
//     the name.
//
// A node then gets one copy of each view instead of one per namespace.

// sharedRouteName names the shared route configuration of a view on port.
func sharedRouteName(port uint32, view, defaultView string) string {
	if view == defaultView {
		return "outbound_" + portString(port)
	}
	return "outbound_" + portString(port) + "~" + view[:8]
}

// localRouteName names a namespace's route configuration for its own VIPs.
func localRouteName(ns string, port uint32) string { return outboundRouteName(ns, port) }

// viewKey hashes everything the shared route configurations of this
// namespace depend on: the services it sees (with their VIPs and ports),
// which VirtualService and DestinationRule apply to each, the client
// namespace when a VirtualService matches on source namespace, and whether
// unknown hosts are allowed. Namespaces with equal keys get equal content
// (routeShare checks that).
func (s *scope) viewKey() string {
	h := sha256.New()
	var buf []byte
	field := func(h hash.Hash, parts ...string) {
		for _, p := range parts {
			buf = binary.AppendUvarint(buf[:0], uint64(len(p)))
			h.Write(append(buf, p...))
		}
	}
	field(h, strconv.FormatBool(s.m.sidecarFor(s.ns).registryOnly))
	for _, svc := range s.services {
		field(h, "svc", svc.Hostname, svc.Namespace, strconv.FormatBool(svc.ServiceEntry))
		field(h, strconv.Itoa(len(svc.VIPs)))
		field(h, svc.VIPs...)
		for _, sp := range svc.Ports {
			field(h, portString(sp.Port), strconv.Itoa(int(sp.Protocol)))
		}
		if o, vs := s.virtualServiceFor(svc); o != nil {
			field(h, "vs", o.Namespace, o.Name)
			if usesSourceNamespace(vs) {
				field(h, "client", s.ns)
			}
		}
		if dr := s.m.destinationRuleFor(svc.Hostname, svc.Namespace, s.ns); dr != nil {
			field(h, "dr", dr.obj.Namespace, dr.obj.Name)
		}
	}
	return hex.EncodeToString(h.Sum(nil))
}

// usesSourceNamespace reports whether a VirtualService matches on the
// client's namespace (then its routes differ per client namespace).
func usesSourceNamespace(vs *networking.VirtualService) bool {
	for _, r := range vs.GetHttp() {
		for _, m := range r.GetMatch() {
			if m.GetSourceNamespace() != "" {
				return true
			}
		}
	}
	for _, r := range vs.GetTcp() {
		for _, m := range r.GetMatch() {
			if m.GetSourceNamespace() != "" {
				return true
			}
		}
	}
	return false
}

// routeShare hands out one message per shared route configuration name,
// so namespaces (and nodes) with the same view share it.
type routeShare struct {
	once        sync.Once
	defaultView string
	mu          sync.Mutex
	byName      map[string]*routev3.RouteConfiguration
}

// defaultViewKey is the view of a namespace with no objects of its own.
func (m *mesh) defaultViewKey() string {
	m.share.once.Do(func() {
		m.share.defaultView = m.scope("").viewKey()
	})
	return m.share.defaultView
}

// verifySharing makes shareRoute compare the content of configurations
// shared under one name (proto.Equal on ~1,000 virtual hosts costs about as
// much as building them). The tests turn it on, so every test mesh proves
// that viewKey tells apart the views that differ.
var verifySharing = false

// sharingMismatches counts what verifySharing found (the tests want 0).
var sharingMismatches atomic.Int64

// sharedRoute returns the configuration already built for name, unless
// verifySharing wants every namespace's built and compared.
func (m *mesh) sharedRoute(name string) (*routev3.RouteConfiguration, bool) {
	if verifySharing {
		return nil, false
	}
	m.share.mu.Lock()
	defer m.share.mu.Unlock()
	rc, ok := m.share.byName[name]
	return rc, ok
}

// shareRoute returns the message to serve under rc's name: the one built
// for the first namespace of the view, else rc. ok is false when
// verifySharing found a different configuration under that name (a view the
// key failed to tell apart); the caller must then not share rc.
func (m *mesh) shareRoute(rc *routev3.RouteConfiguration) (_ *routev3.RouteConfiguration, ok bool) {
	m.share.mu.Lock()
	defer m.share.mu.Unlock()
	if m.share.byName == nil {
		m.share.byName = map[string]*routev3.RouteConfiguration{}
	}
	have, found := m.share.byName[rc.GetName()]
	switch {
	case !found:
		m.share.byName[rc.GetName()] = rc
		return rc, true
	case !verifySharing || proto.Equal(have, rc):
		return have, true
	default:
		sharingMismatches.Add(1)
		return rc, false
	}
}
