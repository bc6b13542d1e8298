package ads

import (
	"maps"
	"sync"
	"time"
)

// Status is a snapshot of the client's sync state, for debug endpoints and
// readiness.
type Status struct {
	Node       string
	Connected  bool // a stream to the control plane is open
	Synced     bool // the first full set has been applied
	Reconnects int  // stream attempts after the first one
	LastError  string
	Types      map[string]TypeStatus // by type URL
}

// TypeStatus is the sync state of one type URL.
type TypeStatus struct {
	Resources int    // resources held (applied)
	Version   string // system_version_info of the last ACKed response
	Nonce     string // nonce of the last ACKed response
	LastAck   time.Time
	// The last NACK; cleared by nothing, compare LastNackTime to LastAck.
	LastNack      string
	LastNackNonce string
	LastNackTime  time.Time
	Applies       int // responses that changed the set and were applied
	Acks          int
	Nacks         int
}

// statusTracker guards Status.
type statusTracker struct {
	mu sync.Mutex
	st Status
}

func newStatusTracker(node string, types []string) *statusTracker {
	st := Status{Node: node, Types: make(map[string]TypeStatus, len(types))}
	for _, t := range types {
		st.Types[t] = TypeStatus{}
	}
	return &statusTracker{st: st}
}

func (s *statusTracker) update(f func(*Status)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(&s.st)
}

func (s *statusTracker) updateType(typeURL string, f func(*TypeStatus)) {
	s.update(func(st *Status) {
		ts := st.Types[typeURL]
		f(&ts)
		st.Types[typeURL] = ts
	})
}

func (s *statusTracker) get() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := s.st
	out.Types = maps.Clone(s.st.Types)
	return out
}
