package xds

import (
	"sort"
	"time"

	"github.com/nodemesh/nodemesh/config"
	"github.com/nodemesh/nodemesh/translate"
)

// NodeStatus is one connected node as /debug/syncz shows it.
type NodeStatus struct {
	ID          string              `json:"id"`
	Kind        string              `json:"kind"`
	Namespace   string              `json:"namespace,omitempty"`
	KubeNode    string              `json:"kube_node,omitempty"`
	Streams     int                 `json:"streams"`
	ConnectedAt time.Time           `json:"connected_at"`
	Generation  uint64              `json:"generation"`
	Types       []TypeStatus        `json:"types"`
	Error       string              `json:"error,omitempty"` // last refused snapshot
	ErrorAt     time.Time           `json:"error_at,omitzero"`
	Diagnostics []config.Diagnostic `json:"-"`
}

// TypeStatus is the state of one type URL for a node: the version the
// server holds for it (Desired) and what the proxy has done with it.
type TypeStatus struct {
	TypeSync
	Type    string `json:"type"`
	Desired string `json:"desired_version,omitempty"`
	State   string `json:"state"`
}

// Status lists every connected node, sorted by id.
func (s *Server) Status() []NodeStatus {
	s.mu.Lock()
	nodes := make([]*nodeState, 0, len(s.nodes))
	streams := make(map[string]int, len(s.nodes))
	for _, ns := range s.nodes {
		nodes = append(nodes, ns)
		streams[ns.id] = ns.streams
	}
	s.mu.Unlock()
	sort.Slice(nodes, func(i, j int) bool { return nodes[i].id < nodes[j].id })

	out := make([]NodeStatus, 0, len(nodes))
	for _, ns := range nodes {
		st := NodeStatus{
			ID: ns.id, Kind: ProxyKindString(ns.proxy.Kind), Namespace: ns.proxy.Namespace,
			KubeNode: ns.proxy.Node, Streams: streams[ns.id], ConnectedAt: ns.connectedAt,
		}
		ns.mu.Lock()
		st.Generation = ns.generation
		desired := ns.versions
		if ns.err != nil {
			st.Error, st.ErrorAt = ns.err.Error(), ns.errAt
		}
		st.Diagnostics = ns.diagnostics
		ns.mu.Unlock()
		syncs := s.acks.status(ns.id)
		for _, t := range TypeURLs {
			if _, ok := syncs[t]; !ok && desired[t] == "" {
				continue // neither served to nor asked for by this node
			}
			ts := syncs[t]
			ts.TypeURL = t
			row := TypeStatus{TypeSync: ts, Type: typeShort(t), Desired: desired[t], State: ts.State()}
			if row.State == "SYNCED" && row.Desired != "" && row.Acked != row.Desired {
				row.State = "STALE"
			}
			st.Types = append(st.Types, row)
		}
		out = append(out, st)
	}
	return out
}

// NodeConfig returns the configuration a node is being served (the last
// good one), or false if the node is unknown or has none yet.
func (s *Server) NodeConfig(id string) (*translate.NodeConfig, Versions, bool) {
	nc, _, v, ok := s.served(id)
	return nc, v, ok
}

func (s *Server) served(id string) (*translate.NodeConfig, []TypedResources, Versions, bool) {
	s.mu.Lock()
	ns := s.nodes[id]
	s.mu.Unlock()
	if ns == nil {
		return nil, nil, nil, false
	}
	ns.mu.Lock()
	defer ns.mu.Unlock()
	return ns.served, ns.servedExtra, ns.versions, ns.served != nil
}

// Diagnostics lists the source's diagnostics, then every node's
// translation diagnostics, without duplicates.
func (s *Server) Diagnostics() []config.Diagnostic {
	var out []config.Diagnostic
	seen := map[string]bool{}
	add := func(ds []config.Diagnostic) {
		for _, d := range ds {
			if k := d.String(); !seen[k] {
				seen[k] = true
				out = append(out, d)
			}
		}
	}
	if s.cfg.SourceDiagnostics != nil {
		add(s.cfg.SourceDiagnostics())
	}
	for _, st := range s.Status() {
		add(st.Diagnostics)
	}
	return out
}
