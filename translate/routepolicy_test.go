package translate

import (
	"path/filepath"
	"testing"
	"time"
)

// Fault injection from the bookinfo samples reaches Envoy and gRPC routes.
func TestFaultInjection(t *testing.T) {
	tests := []struct {
		file      string
		user      string
		abort     uint32
		delay     time.Duration
		wantFault bool
	}{
		{"virtual-service-ratings-test-abort.yaml", "jason", 500, 0, true},
		{"virtual-service-ratings-test-abort.yaml", "mike", 0, 0, false},
		{"virtual-service-ratings-test-delay.yaml", "jason", 0, 7 * time.Second, true},
	}
	for _, tc := range tests {
		snap := load(t, bookinfo(vsFile(tc.file))...)
		for _, p := range []Proxy{{Node: "node-a"}, {Kind: ProxylessGRPC, Namespace: "default"}} {
			nc := mustTranslate(t, snap, p)
			got, err := simulate(nc, request{Namespace: "default", Port: 9080, Host: "ratings", Headers: map[string]string{"end-user": tc.user}})
			if err != nil {
				t.Fatalf("%s %v: %v", tc.file, p.Kind, err)
			}
			if got.only() != "outbound|9080|v1|ratings.default.svc.cluster.local" {
				t.Errorf("%s %v: cluster %v", tc.file, p.Kind, got.Clusters)
			}
			if (got.Fault != nil) != tc.wantFault {
				t.Fatalf("%s %v user %s: fault %v, want fault=%v", tc.file, p.Kind, tc.user, got.Fault, tc.wantFault)
			}
			if !tc.wantFault {
				continue
			}
			if got.Fault.GetAbort().GetHttpStatus() != tc.abort || got.Fault.GetDelay().GetFixedDelay().AsDuration() != tc.delay {
				t.Errorf("%s: fault %v, want abort %d delay %v", tc.file, got.Fault, tc.abort, tc.delay)
			}
			pct := got.Fault.GetAbort().GetPercentage()
			if tc.delay > 0 {
				pct = got.Fault.GetDelay().GetPercentage()
			}
			if pct.GetNumerator() != 1000000 || pct.GetDenominator().String() != "MILLION" {
				t.Errorf("%s: percentage %v, want 100%%", tc.file, pct)
			}
		}
	}
}

// Retries and header operations are carried; an invalid header name is a
// diagnostic and only that route is skipped.
func TestRetriesAndHeaders(t *testing.T) {
	snap := decode(t, `
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - match: [{headers: {end-user: {exact: bad}}}]
    headers:
      request: {set: {"bad header\n": x}}
    route: [{destination: {host: reviews, subset: v1}}]
  - retries: {attempts: 3, perTryTimeout: 2s}
    headers:
      request: {set: {X-Mesh: nodemesh}, remove: [x-debug]}
      response: {add: {X-Served-By: reviews}}
    route: [{destination: {host: reviews, subset: v2}}]
`, bookinfo()...)
	nc := mustTranslate(t, snap, Proxy{Node: "node-a"})
	got, err := simulate(nc, request{Namespace: "default", Port: 9080, Host: "reviews", Headers: map[string]string{"end-user": "bad"}})
	if err != nil || got.only() != reviewsV2 || got.Retries != 3 {
		t.Fatalf("simulate = %+v, %v; want %s with 3 retries (the bad route skipped)", got, err, reviewsV2)
	}
	var diagField string
	for _, d := range nc.Diagnostics {
		if d.Object.Name == "reviews" {
			diagField = d.Field
		}
	}
	if diagField != "spec.http[0]" {
		t.Errorf("diagnostics %v: want one on spec.http[0]", nc.Diagnostics)
	}
	for _, rc := range nc.Routes {
		for _, vh := range rc.GetVirtualHosts() {
			if vh.GetName() != "reviews.default.svc.cluster.local:9080" {
				continue
			}
			r := vh.GetRoutes()[0]
			if len(r.GetRequestHeadersToAdd()) != 1 || r.GetRequestHeadersToAdd()[0].GetHeader().GetKey() != "x-mesh" ||
				len(r.GetRequestHeadersToRemove()) != 1 || r.GetResponseHeadersToAdd()[0].GetAppendAction().String() != "APPEND_IF_EXISTS_OR_ADD" ||
				r.GetRoute().GetRetryPolicy().GetPerTryTimeout().AsDuration() != 2*time.Second {
				t.Errorf("route policies not applied: %v", r)
			}
		}
	}
}

func TestRedirectAndDirectResponse(t *testing.T) {
	snap := decode(t, `
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - match: [{uri: {prefix: /old}}]
    redirect: {uri: /new, authority: details, redirectCode: 302}
  - match: [{uri: {exact: /healthz}}]
    directResponse: {status: 503, body: {string: "draining"}}
  - match: [{uri: {exact: /bad}}]
    directResponse: {status: 42}
  - route: [{destination: {host: reviews, subset: v1}}]
`, bookinfo()...)
	for _, p := range []Proxy{{Node: "node-a"}, {Kind: ProxylessGRPC, Namespace: "default"}} {
		nc := mustTranslate(t, snap, p)
		req := func(path string) result {
			got, err := simulate(nc, request{Namespace: "default", Port: 9080, Host: "reviews", Path: path})
			if err != nil {
				t.Fatalf("%v %s: %v", p.Kind, path, err)
			}
			return got
		}
		if r := req("/old/x").Redirect; r.GetPathRedirect() != "/new" || r.GetHostRedirect() != "details" || r.GetResponseCode().String() != "FOUND" {
			t.Errorf("%v: redirect %v", p.Kind, r)
		}
		if d := req("/healthz").Direct; d.GetStatus() != 503 || d.GetBody().GetInlineString() != "draining" {
			t.Errorf("%v: direct response %v", p.Kind, d)
		}
		if got := req("/bad"); got.only() != reviewsV1 {
			t.Errorf("%v: the invalid direct response was not skipped: %+v", p.Kind, got)
		}
		found := false
		for _, d := range nc.Diagnostics {
			found = found || d.Field == "spec.http[2].directResponse.status"
		}
		if !found {
			t.Errorf("%v: no diagnostic for the bad status: %v", p.Kind, nc.Diagnostics)
		}
	}
}

func TestConsistentHash(t *testing.T) {
	snap := decode(t, `
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings, namespace: default}
spec:
  host: ratings
  trafficPolicy:
    loadBalancer:
      consistentHash: {httpHeaderName: x-user, ringHash: {minimumRingSize: 2048}}
  subsets:
  - {name: v1, labels: {version: v1}}
  - name: rr
    labels: {version: v1}
    trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
`, "testdata/pods.yaml", filepath.Join(istioSamples, "platform/kube/bookinfo.yaml"))
	for _, p := range []Proxy{{Node: "node-a"}, {Kind: ProxylessGRPC, Namespace: "default"}} {
		nc := mustTranslate(t, snap, p)
		c := findCluster(nc, "outbound|9080|v1|ratings.default.svc.cluster.local")
		if c.GetLbPolicy().String() != "RING_HASH" || c.GetRingHashLbConfig().GetMinimumRingSize().GetValue() != 2048 {
			t.Errorf("%v: subset cluster %v; want RING_HASH with ring size 2048", p.Kind, c)
		}
		if rr := findCluster(nc, "outbound|9080|rr|ratings.default.svc.cluster.local"); rr.GetLbPolicy().String() != "ROUND_ROBIN" {
			t.Errorf("%v: subset with its own simple policy: %v", p.Kind, rr.GetLbPolicy())
		}
		for _, rc := range nc.Routes {
			for _, vh := range rc.GetVirtualHosts() {
				if vh.GetName() != "ratings.default.svc.cluster.local:9080" {
					continue
				}
				hp := vh.GetRoutes()[0].GetRoute().GetHashPolicy()
				if len(hp) != 1 || hp[0].GetHeader().GetHeaderName() != "x-user" {
					t.Errorf("%v: default route hash policy %v; want header x-user", p.Kind, hp)
				}
			}
		}
	}
}
