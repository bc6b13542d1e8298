package authz

import (
	"testing"

	"github.com/nodemesh/nodemesh/config"
)

// Shims for the external test package authz_test (crosslayer_test.go),
// which imports translate/dataplane: translate imports authz, so those
// tests cannot live in package authz without an import cycle.

func DecodeForTest(t *testing.T, yaml string) []*config.Object { return decode(t, yaml) }

func SnapshotForTest(t *testing.T, objs ...[]*config.Object) *config.Snapshot {
	return snapshot(t, objs...)
}

func SpiffeForTest(ns, sa string) string { return spiffe(ns, sa) }

var HTTPBinForTest = httpbin

// EvalL4ForTest sends a GET / from principal at sourceIP to port through the
// HTTP filters and a connection through the TCP filters.
func EvalL4ForTest(t *testing.T, f Filters, principal, sourceIP string, port uint32) (httpAllowed, tcpAllowed bool, why string) {
	r := request{principal: principal, sourceIP: sourceIP, port: port, method: "GET", path: "/"}
	h, c := evalHTTP(t, f.HTTP, r), evalTCP(t, f.TCP, r)
	return h.allowed, c.allowed, h.by + "; " + c.by
}
