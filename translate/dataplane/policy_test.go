package dataplane

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/nodemesh/nodemesh/config"
	"github.com/nodemesh/nodemesh/nodeagent"
)

// Behaviour tests: each case adds AuthorizationPolicies to bookinfo and
// "sends" TCP connections between pods. The kernel verdict is evaluated on
// the destination's node from what the agent would program (agent_test.go);
// "proxy" means the kernel lets the connection through to the node proxy
// (kernel allows, and the destination's services are l7) because the
// proxy enforces that policy. Expected verdicts are worked out by hand from
// Istio's documented semantics.

// legacy adds a namespace "legacy" with a client pod on node-b.
const legacy = `
apiVersion: v1
kind: Pod
metadata: {name: old-client, namespace: legacy, labels: {app: old}}
spec:
  nodeName: node-b
  serviceAccountName: old
  containers: [{name: c, image: curl}]
status: {phase: Running, podIP: 10.2.0.50}
`

type conn struct {
	src, dst string // pod names ("" src: a source outside the mesh)
	port     uint16
	want     string // allow, deny or proxy
}

// bookinfo pods by name.
const (
	productpage = "productpage-v1-0"
	details     = "details-v1-0"
	ratings     = "ratings-v1-0"
	reviews1    = "reviews-v1-0"
	reviews2    = "reviews-v2-0"
	reviews3    = "reviews-v3-0"
	oldClient   = "old-client"
)

func TestPolicyBehaviour(t *testing.T) {
	cases := []struct {
		name  string
		yaml  string
		conns []conn
		diag  string // substring of a diagnostic that must be reported
	}{{
		name: "allow from a service account on a port",
		yaml: authz("default", "ALLOW", "app: reviews", `
  - from: [{source: {principals: ["cluster.local/ns/default/sa/bookinfo-productpage"]}}]
    to: [{operation: {ports: ["9080"]}}]`),
		conns: []conn{{productpage, reviews2, 9080, "allow"}, {productpage, reviews1, 9080, "allow"},
			{productpage, reviews2, 9081, "deny"}, {details, reviews2, 9080, "deny"}, {"", reviews1, 9080, "deny"},
			{details, ratings, 9080, "allow"}},
	}, {
		name: "deny from a namespace",
		yaml: legacy + "---\n" + authz("default", "DENY", "app: ratings", `
  - from: [{source: {namespaces: ["legacy"]}}]`),
		conns: []conn{{oldClient, ratings, 9080, "deny"}, {productpage, ratings, 9080, "allow"}, {oldClient, reviews1, 9080, "allow"}},
	}, {
		name:  "allow without rules denies all",
		yaml:  authz("default", "ALLOW", "app: details", ""),
		conns: []conn{{productpage, details, 9080, "deny"}, {"", details, 9080, "deny"}, {productpage, ratings, 9080, "allow"}},
	}, {
		name:  "allow with an empty rule allows all, even beside a deny-all allow",
		yaml:  authz("default", "ALLOW", "app: details", "\n  - {}") + "---\n" + named(authz("default", "ALLOW", "app: details", ""), "p2"),
		conns: []conn{{productpage, details, 9080, "allow"}, {"", details, 1, "allow"}},
	}, {
		name:  "deny without rules matches nothing",
		yaml:  authz("default", "DENY", "app: details", ""),
		conns: []conn{{productpage, details, 9080, "allow"}},
	}, {
		name:  "deny with an empty rule denies all",
		yaml:  authz("default", "DENY", "app: details", "\n  - {}"),
		conns: []conn{{productpage, details, 9080, "deny"}, {"", details, 9080, "deny"}, {productpage, ratings, 9080, "allow"}},
	}, {
		name: "an L7 allow rule sends every allow policy of the identity to the proxy",
		yaml: authz("default", "ALLOW", "app: details", `
  - from: [{source: {principals: ["cluster.local/ns/default/sa/bookinfo-reviews"]}}]`) + "---\n" +
			named(authz("default", "ALLOW", "app: details", `
  - from: [{source: {principals: ["cluster.local/ns/default/sa/bookinfo-productpage"]}}]
    to: [{operation: {methods: ["GET"]}}]`), "p2"),
		// productpage is allowed by the L7 rule: the kernel must not drop it.
		conns: []conn{{productpage, details, 9080, "proxy"}, {reviews1, details, 9080, "proxy"}, {ratings, details, 9080, "proxy"}},
		diag:  "enforced by Envoy RBAC",
	}, {
		name: "a deny policy keeps its L4 rules in the kernel and sends its L7 rules to the proxy",
		yaml: authz("default", "DENY", "app: ratings", `
  - from: [{source: {principals: ["cluster.local/ns/default/sa/bookinfo-details"]}}]
  - to: [{operation: {paths: ["/admin"]}}]`),
		conns: []conn{{details, ratings, 9080, "deny"}, {productpage, ratings, 9080, "proxy"}},
	}, {
		name: "root namespace policies are mesh-wide",
		yaml: legacy + "---\n" + authz("istio-system", "ALLOW", "", `
  - from: [{source: {namespaces: ["default"]}}]`),
		conns: []conn{{oldClient, reviews1, 9080, "deny"}, {productpage, reviews2, 9080, "allow"},
			{productpage, oldClient, 80, "allow"}, {oldClient, oldClient, 80, "deny"}},
	}, {
		name: "a selector picking some pods of an identity leaves its allow policies to the proxy",
		yaml: authz("default", "ALLOW", "version: v2", `
  - from: [{source: {principals: ["cluster.local/ns/default/sa/bookinfo-productpage"]}}]`),
		conns: []conn{{details, reviews2, 9080, "proxy"}, {details, reviews3, 9080, "proxy"}},
		diag:  "selects only some of its workloads",
	}, {
		name:  "a deny selecting some pods of an identity goes to the proxy",
		yaml:  authz("default", "DENY", "version: v2", "\n  - {}"),
		conns: []conn{{details, reviews2, 9080, "proxy"}, {details, reviews3, 9080, "proxy"}},
		diag:  "selects only some workloads of identity default/bookinfo-reviews",
	}, {
		name: "principal wildcards",
		yaml: legacy + "---\n" + authz("default", "ALLOW", "app: reviews", `
  - from: [{source: {principals: ["cluster.local/ns/default/*"]}}]`) + "---\n" + named(authz("default", "ALLOW", "app: ratings", `
  - from: [{source: {principals: ["*"]}}]`), "p2"),
		conns: []conn{{productpage, reviews1, 9080, "allow"}, {oldClient, reviews1, 9080, "deny"},
			{oldClient, ratings, 9080, "allow"}, {"", ratings, 9080, "deny"}},
	}, {
		name: "service accounts",
		yaml: authz("default", "ALLOW", "app: ratings", `
  - from: [{source: {serviceAccounts: ["bookinfo-reviews", "default/bookinfo-productpage"]}}]`),
		conns: []conn{{reviews3, ratings, 9080, "allow"}, {productpage, ratings, 9080, "allow"}, {details, ratings, 9080, "deny"}},
	}, {
		name: "allow ipBlocks match identities wholly inside",
		yaml: authz("default", "ALLOW", "app: ratings", `
  - from: [{source: {ipBlocks: ["10.1.0.10", "10.2.0.10/32"]}}]`),
		// reviews-v2 is inside, but reviews' other pods are not: the kernel
		// cannot tell them apart, so it allows none of them.
		conns: []conn{{productpage, ratings, 9080, "allow"}, {reviews2, ratings, 9080, "deny"}, {details, ratings, 9080, "deny"}},
		diag:  "only some workloads of identity default/bookinfo-reviews are inside",
	}, {
		name: "deny ipBlocks deny identities partly inside",
		yaml: authz("default", "DENY", "app: ratings", `
  - from: [{source: {ipBlocks: ["10.2.0.10"]}}]`),
		conns: []conn{{reviews2, ratings, 9080, "deny"}, {reviews3, ratings, 9080, "deny"}, {productpage, ratings, 9080, "allow"}},
		diag:  "other sources in them are denied only by the node proxy",
	}, {
		name: "when conditions on L4 keys",
		yaml: legacy + "---\n" + authz("default", "ALLOW", "app: ratings", `
  - when:
    - {key: source.namespace, values: ["default"]}
    - {key: destination.port, values: ["9080"]}
    - {key: source.principal, values: ["cluster.local/ns/default/sa/bookinfo-reviews", "cluster.local/ns/legacy/sa/old"]}`),
		conns: []conn{{reviews1, ratings, 9080, "allow"}, {reviews1, ratings, 9090, "deny"}, {oldClient, ratings, 9080, "deny"}},
	}, {
		name: "negated attributes go to the proxy",
		yaml: legacy + "---\n" + authz("default", "DENY", "app: ratings", `
  - from: [{source: {notNamespaces: ["default"]}}]`),
		conns: []conn{{oldClient, ratings, 9080, "proxy"}, {productpage, ratings, 9080, "proxy"}},
	}, {
		name:  "custom goes to the proxy",
		yaml:  strings.Replace(authz("default", "CUSTOM", "app: ratings", "\n  - {}"), "action: CUSTOM", "action: CUSTOM\n  provider: {name: ext}", 1),
		conns: []conn{{productpage, ratings, 9080, "proxy"}},
		diag:  "ext_authz",
	}, {
		// The kernel knows only the mesh's identities: it cannot tell a
		// peer of another trust domain, or one without a certificate, from
		// one of ours, so trustDomains is the proxy's (it checks the peer
		// certificate), even for a source from outside the mesh.
		name: "trust domains go to the proxy",
		yaml: authz("default", "ALLOW", "app: ratings", `
  - from: [{source: {trustDomains: ["cluster.local"]}}]`) + "---\n" + named(authz("default", "ALLOW", "app: details", `
  - from: [{source: {trustDomains: ["other.org"]}}]`), "p2"),
		conns: []conn{{productpage, ratings, 9080, "proxy"}, {"", ratings, 9080, "proxy"}, {productpage, details, 9080, "proxy"}},
		diag:  "enforced by Envoy RBAC",
	}, {
		name: "fields the kernel does not know go to the proxy",
		yaml: authz("default", "DENY", "app: ratings", `
  - from: [{source: {notTrustDomains: ["cluster.local"]}}]`) + "---\n" + named(authz("default", "DENY", "app: details", `
  - when: [{key: "request.headers[x-user]", values: ["eve"]}]`), "p2"),
		conns: []conn{{productpage, ratings, 9080, "proxy"}, {productpage, details, 9080, "proxy"}},
		diag:  "enforced by Envoy RBAC",
	}, {
		name:  "audit changes nothing",
		yaml:  authz("default", "AUDIT", "app: ratings", "\n  - {}"),
		conns: []conn{{productpage, ratings, 9080, "allow"}},
	}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			snap := decode(t, tc.yaml)
			mesh := Prepare(snap, Options{})
			pods := podIndex(snap)
			for _, c := range tc.conns {
				dst := pods[c.dst]
				r := mesh.Translate(dst.node)
				st := agentState(t, r, dst.node)
				var src netip.Addr = netip.MustParseAddr("203.0.113.9")
				if c.src != "" {
					src = pods[c.src].ip
				}
				got := "allow"
				if kernelVerdict(st, src, dst.ip, c.port) == nodeagent.Deny {
					got = "deny"
				} else if servesL7(r, dst.ip) {
					got = "proxy"
				}
				if got != c.want {
					t.Errorf("%s -> %s:%d: got %s, want %s\npolicies: %v", or(c.src, "outside"), c.dst, c.port, got, c.want, r.Policies)
				}
			}
			if tc.diag != "" && !slices.ContainsFunc(mesh.Translate("node-a").Diagnostics, func(d config.Diagnostic) bool {
				return strings.Contains(d.Message, tc.diag)
			}) {
				t.Errorf("no diagnostic mentions %q: %v", tc.diag, mesh.Translate("node-a").Diagnostics)
			}
		})
	}
}

// authz renders an AuthorizationPolicy named "p1".
func authz(ns, action, selector, rules string) string {
	s := "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p1, namespace: " + ns + "}\nspec:\n  action: " + action + "\n"
	if selector != "" {
		s += "  selector: {matchLabels: {" + selector + "}}\n"
	}
	if rules != "" {
		s += "  rules:" + rules + "\n"
	}
	return s
}

func named(yaml, name string) string { return strings.Replace(yaml, "name: p1,", "name: "+name+",", 1) }

type podInfo struct {
	node string
	ip   netip.Addr
}

func podIndex(snap *config.Snapshot) map[string]podInfo {
	out := map[string]podInfo{}
	m := Prepare(snap, Options{})
	for _, w := range m.workloads {
		out[w.name] = podInfo{node: w.node, ip: w.ips[0]}
	}
	return out
}

// servesL7 reports whether a service with a backend at ip is l7.
func servesL7(r *Resources, ip netip.Addr) bool {
	for _, s := range r.Services {
		for _, b := range s.GetBackends() {
			if b.GetIp() == ip.String() && s.GetL7() {
				return true
			}
		}
	}
	return false
}

func or(a, b string) string {
	if a == "" {
		return b
	}
	return a
}
