package xds

import (
	"fmt"
	"sync"
	"time"

	statuspb "google.golang.org/genproto/googleapis/rpc/status"
)

// NACKError is a proxy's rejection of a response: the version it refused
// and the error detail it sent back.
type NACKError struct {
	Node    string
	TypeURL string
	Version string // the version the proxy refused
	Nonce   string
	Code    int32
	Detail  string // the proxy's error message
	At      time.Time
}

func (e *NACKError) Error() string {
	return fmt.Sprintf("node %s rejected %s version %s: %s", e.Node, typeShort(e.TypeURL), e.Version, e.Detail)
}

// TypeSync is the xDS exchange state of one type URL for one node.
type TypeSync struct {
	TypeURL  string     `json:"type_url"`
	Sent     string     `json:"sent_version,omitempty"`
	SentAt   time.Time  `json:"sent_at,omitzero"`
	Acked    string     `json:"acked_version,omitempty"`
	AckedAt  time.Time  `json:"acked_at,omitzero"`
	NACK     *NACKError `json:"nack,omitempty"`
	Pushes   uint64     `json:"pushes"`
	NACKs    uint64     `json:"nacks"`
	Resource int        `json:"resources"`
}

// State summarises a TypeSync like istioctl proxy-status does.
func (t TypeSync) State() string {
	switch {
	case t.NACK != nil:
		return "NACK"
	case t.Sent == "":
		return "NOT SENT"
	case t.Sent == t.Acked:
		return "SYNCED"
	default:
		return "STALE"
	}
}

// streamKey names one gRPC stream; SotW and Delta count stream IDs apart.
type streamKey struct {
	delta bool
	id    int64
}

// pendingLimit bounds the nonces remembered per stream and type; a client
// answers nonces in order, so only the last few can still be answered.
const pendingLimit = 8

// ackTracker matches requests to the responses they answer (by nonce) and
// records ACKs and NACKs per node and type URL, as Cilium's ack.go does.
type ackTracker struct {
	mu      sync.Mutex
	now     func() time.Time
	pending map[streamKey]map[string][]sentResponse // type URL -> in send order
	nodes   map[string]map[string]*TypeSync         // node -> type URL -> state
}

type sentResponse struct {
	nonce, version string
}

func newAckTracker(now func() time.Time) *ackTracker {
	return &ackTracker{
		now:     now,
		pending: make(map[streamKey]map[string][]sentResponse),
		nodes:   make(map[string]map[string]*TypeSync),
	}
}

func (a *ackTracker) typeState(node, typeURL string) *TypeSync {
	m := a.nodes[node]
	if m == nil {
		m = make(map[string]*TypeSync)
		a.nodes[node] = m
	}
	t := m[typeURL]
	if t == nil {
		t = &TypeSync{TypeURL: typeURL}
		m[typeURL] = t
	}
	return t
}

// sent records a response sent on stream s to node.
func (a *ackTracker) sent(s streamKey, node, typeURL, nonce, version string, resources int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	byType := a.pending[s]
	if byType == nil {
		byType = make(map[string][]sentResponse)
		a.pending[s] = byType
	}
	p := append(byType[typeURL], sentResponse{nonce: nonce, version: version})
	if len(p) > pendingLimit {
		p = p[len(p)-pendingLimit:]
	}
	byType[typeURL] = p
	t := a.typeState(node, typeURL)
	t.Sent, t.SentAt, t.Resource = version, a.now(), resources
	t.Pushes++
}

// answered records a request on stream s that answers the response with
// responseNonce: an ACK when errDetail is nil, else a NACK. It returns the
// NACK (or nil) and whether the request answered a known response.
// Requests that answer nothing (first request, unknown nonce) are ignored.
func (a *ackTracker) answered(s streamKey, node, typeURL, responseNonce string, errDetail *statuspb.Status) (*NACKError, bool) {
	if responseNonce == "" {
		return nil, false
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	p := a.pending[s][typeURL]
	i := -1
	for j := range p {
		if p[j].nonce == responseNonce {
			i = j
			break
		}
	}
	if i < 0 {
		return nil, false
	}
	version := p[i].version
	a.pending[s][typeURL] = p[i+1:]
	t := a.typeState(node, typeURL)
	if errDetail == nil {
		t.Acked, t.AckedAt = version, a.now()
		if t.NACK != nil && t.NACK.Version != version {
			t.NACK = nil
		}
		return nil, true
	}
	nack := &NACKError{
		Node: node, TypeURL: typeURL, Version: version, Nonce: responseNonce,
		Code: errDetail.GetCode(), Detail: errDetail.GetMessage(), At: a.now(),
	}
	t.NACK = nack
	t.NACKs++
	return nack, true
}

// closed forgets stream s.
func (a *ackTracker) closed(s streamKey) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.pending, s)
}

// forget drops the status of a node that has gone.
func (a *ackTracker) forget(node string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.nodes, node)
}

// status copies the sync state of node, one entry per type URL seen.
func (a *ackTracker) status(node string) map[string]TypeSync {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make(map[string]TypeSync, len(a.nodes[node]))
	for k, t := range a.nodes[node] {
		c := *t
		if t.NACK != nil {
			n := *t.NACK
			c.NACK = &n
		}
		out[k] = c
	}
	return out
}
