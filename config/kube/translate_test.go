package kube_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/nodemesh/nodemesh/config"
	"github.com/nodemesh/nodemesh/translate"
)

const reviewsHost = "reviews.default.svc.cluster.local"

// checkTranslate translates the snapshot the Source fed from the API server
// for node-a and checks the reviews subsets' clusters, their endpoints (pod
// IPs set through the API) and the 80/20 route.
func checkTranslate(t *testing.T, snap *config.Snapshot, pods map[string]string) {
	nc := translate.Translate(snap, translate.Proxy{Node: "node-a"})
	for _, d := range nc.Diagnostics {
		if d.Severity == config.SeverityError {
			t.Errorf("translate: %v", d)
		}
	}
	for _, v := range []string{"v1", "v2", "v3"} {
		name := "outbound|9080|" + v + "|" + reviewsHost
		var got []string
		found := false
		for _, c := range nc.Clusters {
			found = found || c.GetName() == name
		}
		for _, cla := range nc.Endpoints {
			if cla.GetClusterName() != name {
				continue
			}
			for _, le := range cla.GetEndpoints() {
				for _, lb := range le.GetLbEndpoints() {
					got = append(got, lb.GetEndpoint().GetAddress().GetSocketAddress().GetAddress())
				}
			}
		}
		if !found {
			t.Errorf("no cluster %s", name)
		}
		if want := []string{pods["reviews-"+v]}; !slices.Equal(got, want) {
			t.Errorf("cluster %s endpoints %v, want %v", name, got, want)
		}
	}
	weights := map[string]uint32{}
	for _, rc := range nc.Routes {
		for _, vh := range rc.GetVirtualHosts() {
			if !slices.ContainsFunc(vh.GetDomains(), func(d string) bool { return strings.HasPrefix(d, "reviews") }) {
				continue
			}
			for _, r := range vh.GetRoutes() {
				for _, wc := range r.GetRoute().GetWeightedClusters().GetClusters() {
					weights[wc.GetName()] = wc.GetWeight().GetValue()
				}
			}
		}
	}
	if weights["outbound|9080|v1|"+reviewsHost] != 80 || weights["outbound|9080|v2|"+reviewsHost] != 20 {
		t.Errorf("reviews route weights %v, want v1=80 v2=20", weights)
	}
}
