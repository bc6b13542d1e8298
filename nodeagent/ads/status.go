package ads

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"sync"
	"time"
)

// Status is a snapshot of the client's sync state, for debug endpoints and
// readiness.
type Status struct {
	Node       string                `json:"node"`
	Connected  bool                  `json:"connected"`  // a stream to the control plane is open
	Synced     bool                  `json:"synced"`     // the first full set has been applied
	Reconnects int                   `json:"reconnects"` // stream attempts after the first one
	LastError  string                `json:"lastError,omitempty"`
	Types      map[string]TypeStatus `json:"types"` // by type URL
}

// TypeStatus is the sync state of one type URL.
type TypeStatus struct {
	Resources int       `json:"resources"` // resources held (applied)
	Version   string    `json:"version"`   // system_version_info of the last ACKed response
	Nonce     string    `json:"nonce"`     // nonce of the last ACKed response
	LastAck   time.Time `json:"lastAck"`
	// The last NACK; it stays after later ACKs: compare LastNackTime with
	// LastAck.
	LastNack      string    `json:"lastNack,omitempty"`
	LastNackNonce string    `json:"lastNackNonce,omitempty"`
	LastNackTime  time.Time `json:"lastNackTime,omitzero"`
	Applies       int       `json:"applies"` // ACKed responses that changed the set and were applied
	Acks          int       `json:"acks"`
	Nacks         int       `json:"nacks"`
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

// StatusHandler serves Status as JSON (for the agent's /debug/ads) and
// answers 503 until the first full set was applied when the request has
// ?ready (for a readiness probe).
func (c *Client) StatusHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, ok := r.URL.Query()["ready"]; ok {
			if err := c.Ready(); err != nil {
				http.Error(w, err.Error(), http.StatusServiceUnavailable)
				return
			}
			fmt.Fprintln(w, "ok")
			return
		}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(c.Status())
	})
}
