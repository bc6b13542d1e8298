package identity

import (
	"context"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Source issues SVIDs for the workloads of a node. The built-in CA and SPIRE
// both implement it, so the node agent and SDS do not care which one runs.
type Source interface {
	// SVIDFor returns an SVID for w. The caller has decided that w may
	// have it (CertService's Authorizer, or the node's pod list).
	SVIDFor(ctx context.Context, w Workload) (*x509svid.SVID, error)
	// TrustBundle returns the roots of the source's trust domain.
	TrustBundle(ctx context.Context) (*x509bundle.Bundle, error)
}

// Workload says which workload an SVID is for. The CA needs ID; SPIRE
// needs Selectors (or PID) and, when ID is also set, returns only an SVID
// with that ID.
type Workload struct {
	ID spiffeid.ID
	// Selectors as registered in SPIRE entries, e.g. {"k8s", "ns:demo"} or
	// {"unix", "uid:1000"}.
	Selectors []Selector
	// PID lets SPIRE attest a local process itself instead of Selectors.
	PID int32
}

// Selector is a SPIRE selector: Type "unix", Value "uid:1000".
type Selector struct {
	Type, Value string
}

func (s Selector) String() string { return s.Type + ":" + s.Value }

func (w Workload) String() string {
	switch {
	case !w.ID.IsZero():
		return w.ID.String()
	case w.PID != 0:
		return fmt.Sprintf("pid %d", w.PID)
	default:
		return fmt.Sprintf("selectors %v", w.Selectors)
	}
}
