package authz_test

import (
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"

	"github.com/nodemesh/nodemesh/config"
	"github.com/nodemesh/nodemesh/translate"
	"github.com/nodemesh/nodemesh/translate/authz"
	"github.com/nodemesh/nodemesh/translate/inboundauthz"
	"github.com/nodemesh/nodemesh/translate/secure"
)

// Behaviour of the joined pipeline (translate -> secure -> inboundauthz):
// requests are sent through the filter chain Envoy would select in node-a's
// inbound listener for the destination pod address and port, and this
// package's evaluator decides.

const inboundPolicies = `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: details-get-info, namespace: default}
spec:
  selector: {matchLabels: {app: details}}
  rules:
  - from: [{source: {principals: ["*/sa/sleep"]}}]
    to: [{operation: {methods: ["GET"], paths: ["/info*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-dev, namespace: default}
spec:
  selector: {matchLabels: {app: details}}
  action: DENY
  rules: [{from: [{source: {namespaces: ["dev"]}}]}]
`

const (
	detailsIP     = "10.1.0.11" // node-a, policies above
	ratingsIP     = "10.1.0.12" // node-a, no policy
	productpageIP = "10.1.0.10" // node-a, no policy
)

func bookinfoSnapshot(t *testing.T, extra string) *config.Snapshot {
	t.Helper()
	objs, diags := config.Load(filepath.Join("../../../shared/testdata/istio/samples/bookinfo/platform/kube/bookinfo.yaml"), "../testdata/pods.yaml")
	more, d2 := config.Decode("inline.yaml", []byte(extra))
	for _, d := range append(diags, d2...) {
		if d.Severity >= config.SeverityWarning {
			t.Fatalf("loading test input: %v", d)
		}
	}
	st := config.NewStore()
	if err := st.Replace("test", append(objs, more...)); err != nil {
		t.Fatal(err)
	}
	return st.Snapshot()
}

// pipeline translates node-a, applies secure (unless mode is "plain") and
// inboundauthz, and checks the result as the xds pipeline does.
func pipeline(t *testing.T, snap *config.Snapshot, withSecure bool) (plain, out *translate.NodeConfig) {
	t.Helper()
	build := func(authzToo bool) *translate.NodeConfig {
		nc := translate.Translate(snap, translate.Proxy{Node: "node-a"})
		if withSecure {
			secure.Apply(nc, snap, secure.Options{TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local")})
		}
		if authzToo {
			if diags := inboundauthz.Apply(nc, snap, authz.Options{}); config.HasErrors(diags) {
				t.Fatalf("inboundauthz.Apply: %v", diags)
			}
			if err := inboundauthz.Check(nc, translate.Check); err != nil {
				t.Fatalf("check after inboundauthz.Apply: %v", err)
			}
		}
		return nc
	}
	return build(false), build(true)
}

func listener(t *testing.T, nc *translate.NodeConfig, name string) *listenerv3.Listener {
	t.Helper()
	for _, l := range nc.Listeners {
		if l.GetName() == name {
			return l
		}
	}
	t.Fatalf("no listener %s", name)
	return nil
}

// selectChain picks the filter chain as Envoy does for a connection to
// ip:port whose first bytes are of transport ("tls" or "raw_buffer"):
// destination port (exact, else chains without one), then the longest
// destination prefix (chains without ranges match any), then transport
// protocol (exact, else chains without one). Exactly one must be left.
func selectChain(t *testing.T, l *listenerv3.Listener, ip string, port uint32, transport string) *listenerv3.FilterChain {
	t.Helper()
	step := func(chains []*listenerv3.FilterChain, score func(*listenerv3.FilterChainMatch) int) []*listenerv3.FilterChain {
		best, out := -2, []*listenerv3.FilterChain(nil)
		for _, fc := range chains {
			switch s := score(fc.GetFilterChainMatch()); {
			case s > best:
				best, out = s, []*listenerv3.FilterChain{fc}
			case s == best && s >= -1:
				out = append(out, fc)
			}
		}
		if best < -1 {
			return nil
		}
		return out
	}
	addr := netip.MustParseAddr(ip)
	chains := step(l.GetFilterChains(), func(m *listenerv3.FilterChainMatch) int {
		switch m.GetDestinationPort().GetValue() {
		case port:
			return 1
		case 0:
			return 0
		}
		return -2
	})
	chains = step(chains, func(m *listenerv3.FilterChainMatch) int {
		if len(m.GetPrefixRanges()) == 0 {
			return -1
		}
		best := -2
		for _, r := range m.GetPrefixRanges() {
			p := netip.PrefixFrom(netip.MustParseAddr(r.GetAddressPrefix()), int(r.GetPrefixLen().GetValue()))
			if p.Contains(addr) && p.Bits() > best {
				best = p.Bits()
			}
		}
		return best
	})
	chains = step(chains, func(m *listenerv3.FilterChainMatch) int {
		switch m.GetTransportProtocol() {
		case transport:
			return 1
		case "":
			return 0
		}
		return -2
	})
	if len(chains) != 1 {
		t.Fatalf("%s:%d (%s): %d filter chains match in %s, want 1", ip, port, transport, len(chains), l.GetName())
	}
	return chains[0]
}

func TestInboundChainsEnforcePolicies(t *testing.T) {
	snap := bookinfoSnapshot(t, inboundPolicies)
	sleep := "spiffe://cluster.local/ns/default/sa/sleep"
	devSleep := "spiffe://cluster.local/ns/dev/sa/sleep"
	web := "spiffe://cluster.local/ns/default/sa/web"
	cases := []struct {
		name      string
		principal string // "" plaintext
		ip        string
		port      uint32
		method    string // "" a TCP connection
		path      string
		wantHTTP  bool
		allowed   bool
	}{
		{"sleep GET /info/1", sleep, detailsIP, 9080, "GET", "/info/1", true, true},
		{"sleep GET /info", sleep, detailsIP, 9080, "GET", "/info", true, true},
		{"sleep GET /details/0", sleep, detailsIP, 9080, "GET", "/details/0", true, false},
		{"sleep POST /info", sleep, detailsIP, 9080, "POST", "/info", true, false},
		{"web GET /info", web, detailsIP, 9080, "GET", "/info", true, false},
		{"dev's sleep GET /info: DENY wins", devSleep, detailsIP, 9080, "GET", "/info", true, false},
		{"sleep TCP to a port no service names", sleep, detailsIP, 9999, "", "", false, false},
		{"plaintext GET /info", "", detailsIP, 9080, "GET", "/info", true, false},
		{"ratings has no policy", web, ratingsIP, 9080, "", "", false, true},
		{"productpage has no policy, any port", devSleep, productpageIP, 9999, "", "", false, true},
	}
	for _, mode := range []string{"plain", "secure"} {
		t.Run(mode, func(t *testing.T) {
			plain, nc := pipeline(t, snap, mode == "secure")
			l, before := listener(t, nc, "inbound_default"), listener(t, plain, "inbound_default")
			for _, c := range cases {
				t.Run(c.name, func(t *testing.T) {
					transport, principal, want := "raw_buffer", c.principal, c.allowed
					switch {
					case mode == "plain":
						// No mTLS without translate/secure: no peer identity,
						// so the principal ALLOW rule fails closed.
						principal, want = "", c.ip != detailsIP
					case principal != "":
						transport = "tls"
					}
					fc := selectChain(t, l, c.ip, c.port, transport)
					if mode == "secure" && (fc.GetTransportSocket() != nil) != (transport == "tls") {
						t.Errorf("chain %s: transport socket %v for a %s connection", fc.GetName(), fc.GetTransportSocket(), transport)
					}
					allowed, isHTTP, why := authz.EvalChainForTest(t, fc, authz.RequestForTest{
						Principal: principal, SourceIP: "10.2.0.10", DestIP: c.ip, Port: c.port, Method: c.method, Path: c.path})
					if isHTTP != c.wantHTTP || allowed != want {
						t.Errorf("chain %s: http=%v allowed=%v (%s); want http=%v allowed=%v", fc.GetName(), isHTTP, allowed, why, c.wantHTTP, want)
					}
					if c.ip != detailsIP { // no policy: the chain is the one translate/secure built
						old := selectChain(t, before, c.ip, c.port, transport)
						if !proto.Equal(&listenerv3.FilterChain{Filters: old.Filters, TransportSocket: old.TransportSocket},
							&listenerv3.FilterChain{Filters: fc.Filters, TransportSocket: fc.TransportSocket}) {
							t.Errorf("chain %s of a pod without policy changed:\nbefore %v\nafter  %v", fc.GetName(), old, fc)
						}
					}
				})
			}
			checkInboundRoute(t, nc, l)
		})
	}
}

// checkInboundRoute: the HTTP connection managers route with RDS to the
// namespace's original destination cluster, which speaks the downstream's
// protocol.
func checkInboundRoute(t *testing.T, nc *translate.NodeConfig, l *listenerv3.Listener) {
	t.Helper()
	hcms := 0
	for _, fc := range l.GetFilterChains() {
		last := fc.GetFilters()[len(fc.GetFilters())-1]
		var hcm hcmv3.HttpConnectionManager
		if last.GetTypedConfig().UnmarshalTo(&hcm) != nil {
			continue
		}
		hcms++
		if !strings.Contains(fc.GetName(), detailsIP) {
			t.Errorf("chain %s has an HTTP connection manager but is not details'", fc.GetName())
		}
		if got := hcm.GetRds().GetRouteConfigName(); got != inboundauthz.RouteName("default") {
			t.Errorf("chain %s: RDS %q", fc.GetName(), got)
		}
	}
	if hcms == 0 {
		t.Fatal("no HTTP connection manager in inbound_default")
	}
	var rc *routev3.RouteConfiguration
	for _, r := range nc.Routes {
		if r.GetName() == inboundauthz.RouteName("default") {
			rc = r
		}
	}
	if got := rc.GetVirtualHosts()[0].GetRoutes()[0].GetRoute().GetCluster(); got != inboundauthz.ClusterName("default") {
		t.Errorf("inbound route goes to %q", got)
	}
	for _, c := range nc.Clusters {
		if c.GetName() == inboundauthz.ClusterName("default") && len(c.GetTypedExtensionProtocolOptions()) == 0 {
			t.Errorf("cluster %s has no HTTP protocol options", c.GetName())
		}
	}
}

// portLevelModes: namespace STRICT; details PERMISSIVE but STRICT on 8080
// and DISABLE on 9080 (its HTTP port); reviews STRICT on 9080 only.
const portLevelModes = `
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: default}
spec:
  mtls: {mode: STRICT}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: details, namespace: default}
spec:
  selector: {matchLabels: {app: details}}
  mtls: {mode: PERMISSIVE}
  portLevelMtls:
    8080: {mode: STRICT}
    9080: {mode: DISABLE}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: reviews, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  mtls: {mode: PERMISSIVE}
  portLevelMtls:
    9080: {mode: STRICT}
`

// Authorization never changes what secure decided about transport: for
// every pod address, port and client transport, the chain Envoy selects
// after inboundauthz terminates (or does not terminate) TLS exactly like
// the one selected before; pods without policy keep the same filters, and
// details gets its policy on every one of its chains.
func TestInboundKeepsPeerAuthenticationModes(t *testing.T) {
	for name, modes := range map[string]string{"permissive": "", "port-level": portLevelModes} {
		t.Run(name, func(t *testing.T) {
			before, after := pipeline(t, bookinfoSnapshot(t, inboundPolicies+modes), true)
			lb, la := listener(t, before, "inbound_default"), listener(t, after, "inbound_default")
			for _, ip := range []string{productpageIP, detailsIP, ratingsIP, "10.1.0.13"} {
				for _, port := range []uint32{9080, 8080, 9999} {
					for _, transport := range []string{"tls", "raw_buffer"} {
						b, a := selectChain(t, lb, ip, port, transport), selectChain(t, la, ip, port, transport)
						if !proto.Equal(b.GetTransportSocket(), a.GetTransportSocket()) || b.GetFilterChainMatch().GetTransportProtocol() != a.GetFilterChainMatch().GetTransportProtocol() {
							t.Errorf("%s:%d %s: chain %s (TLS %v) became %s (TLS %v)", ip, port, transport,
								b.GetName(), b.GetTransportSocket() != nil, a.GetName(), a.GetTransportSocket() != nil)
						}
						sameFilters := proto.Equal(&listenerv3.FilterChain{Filters: b.Filters}, &listenerv3.FilterChain{Filters: a.Filters})
						if sameFilters != (ip != detailsIP) {
							t.Errorf("%s:%d %s: chain %s -> %s: filters unchanged=%v", ip, port, transport, b.GetName(), a.GetName(), sameFilters)
						}
					}
				}
			}
		})
	}
}
