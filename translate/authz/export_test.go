package authz

import (
	"fmt"
	"testing"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	jwtv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	connlimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/connection_limit/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	rbacnetv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	tcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"

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

// RequestForTest is a request or connection for EvalChainForTest.
type RequestForTest struct {
	Principal string // peer SPIFFE ID; "" without mTLS
	SourceIP  string
	DestIP    string
	Port      uint32
	Method    string // HTTP only
	Path      string // HTTP only
	Headers   map[string]string
}

// EvalChainForTest runs r through an inbound filter chain as Envoy would:
// network filters in order (connection_limit passes, network RBAC decides,
// tcp_proxy ends it) or, in an HTTP connection manager, the HTTP filters
// before the router (jwt_authn lets a request without a token through).
// isHTTP says whether the chain ended in an HTTP connection manager.
func EvalChainForTest(t *testing.T, fc *listenerv3.FilterChain, r RequestForTest) (allowed, isHTTP bool, why string) {
	t.Helper()
	req := request{principal: r.Principal, sourceIP: r.SourceIP, destIP: r.DestIP, port: r.Port, method: r.Method, path: r.Path, headers: r.Headers}
	for i, f := range fc.GetFilters() {
		m, err := f.GetTypedConfig().UnmarshalNew()
		if err != nil {
			t.Fatalf("chain %s filter %d: %v", fc.GetName(), i, err)
		}
		switch cfg := m.(type) {
		case *connlimitv3.ConnectionLimit:
		case *rbacnetv3.RBAC:
			if v := evalTCP(t, []*listenerv3.Filter{f}, req); !v.allowed {
				return false, false, fmt.Sprintf("network filter %s: %s", f.GetName(), v.by)
			}
		case *tcpv3.TcpProxy:
			return true, false, "tcp_proxy"
		case *hcmv3.HttpConnectionManager:
			var hf []*hcmv3.HttpFilter
			for _, h := range cfg.GetHttpFilters() {
				if h.GetTypedConfig().MessageIs((*routerv3.Router)(nil)) || h.GetTypedConfig().MessageIs((*jwtv3.JwtAuthentication)(nil)) {
					continue
				}
				hf = append(hf, h)
			}
			v := evalHTTP(t, hf, req)
			return v.allowed, true, v.by
		default:
			t.Fatalf("chain %s filter %d: evaluator does not know %T", fc.GetName(), i, m)
		}
	}
	t.Fatalf("chain %s has no terminal filter", fc.GetName())
	return false, false, ""
}
