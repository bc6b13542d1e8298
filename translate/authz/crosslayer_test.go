package authz_test

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	dataplanev1 "github.com/nodemesh/nodemesh/api/dataplane/v1"
	"github.com/nodemesh/nodemesh/config"
	"github.com/nodemesh/nodemesh/translate/authz"
	"github.com/nodemesh/nodemesh/translate/dataplane"
)

// The mesh of the cross-layer tests: httpbin (foo/httpbin) on node-a and
// clients in several namespaces.
const crossMesh = `
apiVersion: v1
kind: Pod
metadata: {name: httpbin, namespace: foo, labels: {app: httpbin, version: v1}}
spec: {nodeName: node-a, serviceAccountName: httpbin, containers: [{name: c, image: i}]}
status: {podIP: 10.0.1.10}
---
apiVersion: v1
kind: Pod
metadata: {name: sleep, namespace: default}
spec: {nodeName: node-b, serviceAccountName: sleep, containers: [{name: c, image: i}]}
status: {podIP: 10.0.2.10}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: default}
spec: {nodeName: node-b, serviceAccountName: web, containers: [{name: c, image: i}]}
status: {podIP: 10.0.2.11}
---
apiVersion: v1
kind: Pod
metadata: {name: devpod, namespace: dev}
spec: {nodeName: node-a, serviceAccountName: x, containers: [{name: c, image: i}]}
status: {podIP: 10.0.3.10}
---
apiVersion: v1
kind: Pod
metadata: {name: testpod, namespace: test}
spec: {nodeName: node-b, serviceAccountName: t, containers: [{name: c, image: i}]}
status: {podIP: 10.0.4.10}
`

type client struct{ ns, sa, ip string }

var crossClients = []client{{"default", "sleep", "10.0.2.10"}, {"default", "web", "10.0.2.11"}, {"dev", "x", "10.0.3.10"}, {"test", "t", "10.0.4.10"}}

// L4-only policy sets; each is evaluated by both layers.
var l4Cases = []struct{ name, yaml string }{
	{"allow principals on a port", `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: a, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/sleep"]}}]
    to: [{operation: {ports: ["8000"]}}]
`},
	{"deny namespace dev", `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: d, namespace: foo}
spec:
  action: DENY
  rules: [{from: [{source: {namespaces: ["dev"]}}]}]
`},
	{"allow nothing", `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: nothing, namespace: foo}
spec: {}
`},
	{"allow all beside deny one port", `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: all, namespace: foo}
spec: {rules: [{}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-9000, namespace: foo}
spec:
  action: DENY
  rules: [{to: [{operation: {ports: ["9000"]}}]}]
`},
	{"ipBlocks, namespaces with wildcard, when source.namespace and destination.port", `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mix, namespace: foo}
spec:
  rules:
  - from: [{source: {ipBlocks: ["10.0.4.0/24"]}}]
  - from: [{source: {namespaces: ["def*"]}}]
    when:
    - {key: destination.port, values: ["8000", "9000"]}
  - when:
    - {key: source.namespace, values: ["dev"]}
    - {key: source.principal, values: ["*/sa/x"]}
`},
	{"mesh-wide deny from the root namespace", `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: root, namespace: istio-system}
spec:
  action: DENY
  rules: [{from: [{source: {principals: ["cluster.local/ns/default/sa/web"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-default, namespace: foo}
spec:
  rules: [{from: [{source: {namespaces: ["default"]}}]}]
`},
}

// A workload's decision is never weakened by the split: for L4-only
// policies the kernel entries of translate/dataplane and this package's
// RBAC (HTTP and TCP) give the same verdict for every client and port.
func TestCrossLayerL4Verdicts(t *testing.T) {
	for _, c := range l4Cases {
		t.Run(c.name, func(t *testing.T) {
			objs := authz.DecodeForTest(t, crossMesh+"---"+c.yaml)
			snap := authz.SnapshotForTest(t, objs)
			for _, p := range mustPolicies(t, snap) {
				if !authz.Split(p) {
					t.Fatalf("policy %s is not L4-only: the case is wrong", p.Name)
				}
			}
			res := dataplane.Translate(snap, "node-a")
			if len(res.Policies) == 0 {
				t.Fatalf("dataplane produced no kernel policy; diagnostics: %v", res.Diagnostics)
			}
			f := authz.Build(snap, authz.HTTPBinForTest, authz.Options{})
			if len(f.Diagnostics) > 0 {
				t.Fatal(f.Diagnostics)
			}
			// Identities are mesh-wide; node-b's resources hold the clients
			// that are no policy source.
			resB := dataplane.Translate(snap, "node-b")
			all := &dataplane.Resources{Workloads: append(slices.Clone(res.Workloads), resB.Workloads...)}
			dst := identityOf(t, all, "foo", "httpbin")
			for _, cl := range crossClients {
				for _, port := range []uint32{8000, 9000, 3306} {
					kernel := kernelVerdict(res, dst, identityOf(t, all, cl.ns, cl.sa), port)
					h, tcp, why := authz.EvalL4ForTest(t, f, authz.SpiffeForTest(cl.ns, cl.sa), cl.ip, port)
					if h != kernel || tcp != kernel {
						t.Errorf("%s/%s -> port %d: kernel %v, RBAC http %v, tcp %v (%s)", cl.ns, cl.sa, port, kernel, h, tcp, why)
					}
				}
			}
		})
	}
}

func mustPolicies(t *testing.T, snap *config.Snapshot) []*authz.Policy {
	var out []*authz.Policy
	for _, o := range snap.List(config.KindAuthorizationPolicy) {
		p, diags := authz.FromAuthorizationPolicy(o, authz.Options{})
		if len(diags) > 0 {
			t.Fatal(diags)
		}
		out = append(out, p)
	}
	return out
}

func identityOf(t *testing.T, res *dataplane.Resources, ns, sa string) uint32 {
	for _, w := range res.Workloads {
		if w.GetNamespace() == ns && w.GetServiceAccount() == sa {
			return w.GetIdentity()
		}
	}
	t.Fatalf("no workload %s/%s in the dataplane resources", ns, sa)
	return 0
}

// kernelVerdict evaluates the kernel policy entries as the node agent's
// programs do: a matching DENY rule denies; if an ALLOW policy selects the
// destination, one of its rules must match; otherwise allow.
func kernelVerdict(res *dataplane.Resources, dst, src, port uint32) bool {
	ruleMatches := func(r *dataplanev1.PolicyRule) bool {
		return (len(r.GetSources()) == 0 || slices.Contains(r.GetSources(), src)) &&
			(len(r.GetPorts()) == 0 || slices.Contains(r.GetPorts(), port))
	}
	hasAllow, allowed := false, false
	for _, p := range res.Policies {
		if !slices.Contains(p.GetSelected(), dst) {
			continue
		}
		for _, r := range p.GetRules() {
			if p.GetAction() == dataplanev1.Action_DENY && ruleMatches(r) {
				return false
			}
			if p.GetAction() == dataplanev1.Action_ALLOW && ruleMatches(r) {
				allowed = true
			}
		}
		if p.GetAction() == dataplanev1.Action_ALLOW {
			hasAllow = true
		}
	}
	return !hasAllow || allowed
}

// authz.Split and translate/dataplane agree, rule by rule, on what the kernel can
// enforce: dataplane reports every rule it leaves to the proxy.
func TestSplitAgreesWithDataplane(t *testing.T) {
	rules := []string{
		`{from: [{source: {principals: ["cluster.local/ns/default/sa/sleep"]}}]}`,
		`{from: [{source: {notPrincipals: ["cluster.local/ns/default/sa/sleep"]}}]}`,
		`{from: [{source: {namespaces: ["dev"]}}], to: [{operation: {ports: ["80"]}}]}`,
		`{from: [{source: {notNamespaces: ["dev"]}}]}`,
		`{from: [{source: {ipBlocks: ["10.0.0.0/8"]}}]}`,
		`{from: [{source: {notIpBlocks: ["10.0.0.0/8"]}}]}`,
		`{from: [{source: {remoteIpBlocks: ["10.0.0.0/8"]}}]}`,
		`{from: [{source: {requestPrincipals: ["*"]}}]}`,
		`{from: [{source: {serviceAccounts: ["default/sleep"]}}]}`,
		`{to: [{operation: {ports: ["80"]}}]}`,
		`{to: [{operation: {notPorts: ["80"]}}]}`,
		`{to: [{operation: {methods: ["GET"]}}]}`,
		`{to: [{operation: {paths: ["/x"]}}]}`,
		`{to: [{operation: {hosts: ["a.b"]}}]}`,
		`{when: [{key: source.ip, values: ["10.0.0.1"]}]}`,
		`{when: [{key: source.namespace, values: ["dev"]}]}`,
		`{when: [{key: source.principal, values: ["*"]}]}`,
		`{when: [{key: destination.port, values: ["80"]}]}`,
		`{when: [{key: destination.port, notValues: ["80"]}]}`,
		`{when: [{key: remote.ip, values: ["10.0.0.1"]}]}`,
		`{when: [{key: connection.sni, values: ["a"]}]}`,
		`{when: [{key: "request.headers[x]", values: ["a"]}]}`,
		`{when: [{key: "request.auth.claims[iss]", values: ["a"]}]}`,
		`{from: [{source: {trustDomains: ["cluster.local"]}}]}`,
		`{from: [{source: {notTrustDomains: ["other.org"]}}]}`,
		`{}`,
	}
	var b strings.Builder
	for _, action := range []string{"ALLOW", "DENY"} {
		fmt.Fprintf(&b, "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p-%s, namespace: foo}\nspec:\n  action: %s\n  rules:\n", strings.ToLower(action), action)
		for _, r := range rules {
			fmt.Fprintf(&b, "  - %s\n", r)
		}
	}
	snap := authz.SnapshotForTest(t, authz.DecodeForTest(t, crossMesh+b.String()))
	res := dataplane.Translate(snap, "node-a")
	proxyByDataplane := map[string]bool{} // "<policy> <rule index>"
	ruleRE := regexp.MustCompile(`^spec\.rules\[(\d+)\]`)
	for _, d := range res.Diagnostics {
		if strings.Contains(d.Message, "enforced by Envoy RBAC in the node proxy") {
			if m := ruleRE.FindStringSubmatch(d.Field); m != nil {
				proxyByDataplane[d.Object.Name+" "+m[1]] = true
			}
		}
	}
	if len(proxyByDataplane) == 0 {
		t.Fatalf("dataplane reported no proxy rule; diagnostics: %v", res.Diagnostics)
	}
	for _, p := range mustPolicies(t, snap) {
		for i, r := range p.Rules {
			key := p.Name + " " + strconv.Itoa(i)
			if authz.SplitRule(r) == proxyByDataplane[key] {
				t.Errorf("%s rule %d (%s): authz.SplitRule=%v, dataplane leaves it to the proxy=%v",
					p.Name, i, rules[i], authz.SplitRule(r), proxyByDataplane[key])
			}
		}
	}
}
