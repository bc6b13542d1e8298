package ads

import (
	"fmt"
	"maps"
	"slices"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/proto"

	dataplanev1 "github.com/nodemesh/nodemesh/api/dataplane/v1"
)

// Resources is the complete desired dataplane set of a node, keyed by
// resource name. The messages are shared with the client and must be treated
// as read-only.
type Resources struct {
	Listeners map[string]*dataplanev1.NamespaceListener
	Workloads map[string]*dataplanev1.Workload
	Services  map[string]*dataplanev1.Service
	Policies  map[string]*dataplanev1.Policy
}

// Len is the total number of resources.
func (r *Resources) Len() int {
	return len(r.Listeners) + len(r.Workloads) + len(r.Services) + len(r.Policies)
}

// decoders builds an empty message for each dataplane type URL.
var decoders = map[string]func() proto.Message{
	dataplanev1.NamespaceListenerType: func() proto.Message { return &dataplanev1.NamespaceListener{} },
	dataplanev1.WorkloadType:          func() proto.Message { return &dataplanev1.Workload{} },
	dataplanev1.ServiceType:           func() proto.Message { return &dataplanev1.Service{} },
	dataplanev1.PolicyType:            func() proto.Message { return &dataplanev1.Policy{} },
}

// held is one resource the client holds, with the version the control plane
// gave it.
type held struct {
	version string
	msg     proto.Message
}

// resourceSet is the set held per type URL: type URL -> name -> resource.
type resourceSet map[string]map[string]held

// stage is a resourceSet being built from a base by deltas, copying a
// type's map only when a delta touches it (the base is never modified).
type stage struct {
	set   resourceSet
	owned map[string]bool // types copied from the base
}

func newStage(base resourceSet) *stage {
	return &stage{set: maps.Clone(base), owned: map[string]bool{}}
}

// apply folds d into the stage; see resourceSet.apply.
func (s *stage) apply(d delta) (changed bool) {
	if !s.owned[d.typeURL] {
		s.set[d.typeURL] = maps.Clone(s.set[d.typeURL])
		s.owned[d.typeURL] = true
	}
	return s.set.apply(d)
}

// versions returns name -> version of one type, for initial_resource_versions.
func (s resourceSet) versions(typeURL string) map[string]string {
	if len(s[typeURL]) == 0 {
		return nil
	}
	out := make(map[string]string, len(s[typeURL]))
	for name, h := range s[typeURL] {
		out[name] = h.version
	}
	return out
}

// resources builds the Applier's view of the set.
func (s resourceSet) resources() *Resources {
	r := &Resources{
		Listeners: make(map[string]*dataplanev1.NamespaceListener, len(s[dataplanev1.NamespaceListenerType])),
		Workloads: make(map[string]*dataplanev1.Workload, len(s[dataplanev1.WorkloadType])),
		Services:  make(map[string]*dataplanev1.Service, len(s[dataplanev1.ServiceType])),
		Policies:  make(map[string]*dataplanev1.Policy, len(s[dataplanev1.PolicyType])),
	}
	for name, h := range s[dataplanev1.NamespaceListenerType] {
		r.Listeners[name] = h.msg.(*dataplanev1.NamespaceListener)
	}
	for name, h := range s[dataplanev1.WorkloadType] {
		r.Workloads[name] = h.msg.(*dataplanev1.Workload)
	}
	for name, h := range s[dataplanev1.ServiceType] {
		r.Services[name] = h.msg.(*dataplanev1.Service)
	}
	for name, h := range s[dataplanev1.PolicyType] {
		r.Policies[name] = h.msg.(*dataplanev1.Policy)
	}
	return r
}

// delta is one decoded DeltaDiscoveryResponse.
type delta struct {
	typeURL string
	updated map[string]held
	removed []string
}

// decodeDelta unpacks the resources of a response. Any resource that cannot
// be decoded fails the whole response, naming the resource.
func decodeDelta(resp *discovery.DeltaDiscoveryResponse) (delta, error) {
	d := delta{typeURL: resp.GetTypeUrl(), removed: resp.GetRemovedResources()}
	newMsg, ok := decoders[d.typeURL]
	if !ok {
		return d, fmt.Errorf("unexpected type %q", d.typeURL)
	}
	d.updated = make(map[string]held, len(resp.GetResources()))
	for i, r := range resp.GetResources() {
		name := r.GetName()
		if name == "" {
			return d, fmt.Errorf("%s resource %d: empty name", d.typeURL, i)
		}
		if _, dup := d.updated[name]; dup {
			return d, fmt.Errorf("%s %q: sent twice in one response", d.typeURL, name)
		}
		if r.GetResource() == nil {
			return d, fmt.Errorf("%s %q: no resource body", d.typeURL, name)
		}
		if got := r.GetResource().GetTypeUrl(); got != d.typeURL {
			return d, fmt.Errorf("%s %q: body has type %q", d.typeURL, name, got)
		}
		msg := newMsg()
		if err := r.GetResource().UnmarshalTo(msg); err != nil {
			return d, fmt.Errorf("%s %q: decoding: %w", d.typeURL, name, err)
		}
		d.updated[name] = held{version: r.GetVersion(), msg: msg}
	}
	return d, nil
}

// apply folds d into s (in place) and reports whether anything changed: a
// new resource, a new version of one, or a removal of one held.
func (s resourceSet) apply(d delta) (changed bool) {
	m := s[d.typeURL]
	if m == nil {
		m = make(map[string]held, len(d.updated))
		s[d.typeURL] = m
	}
	for _, name := range d.removed {
		if _, ok := m[name]; ok {
			delete(m, name)
			changed = true
		}
	}
	for name, h := range d.updated {
		old, ok := m[name]
		if !ok || old.version != h.version || (h.version == "" && !proto.Equal(old.msg, h.msg)) {
			changed = true
		}
		m[name] = h
	}
	return changed
}

// names returns the sorted resource names of one type, for logs and tests.
func (s resourceSet) names(typeURL string) []string {
	return slices.Sorted(maps.Keys(s[typeURL]))
}
