package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"sigs.k8s.io/yaml"

	"github.com/nodemesh/nodemesh/xds"
)

// bookinfo is Istio's sample, in shared/ beside the repository.
const bookinfo = "../../../shared/testdata/istio/samples/bookinfo"

// bookinfoFiles are the bookinfo services plus one consistent set of
// traffic rules (the sample folder holds alternatives that clash).
func bookinfoFiles(t *testing.T) []string {
	t.Helper()
	files := []string{
		filepath.Join(bookinfo, "platform/kube/bookinfo.yaml"),
		filepath.Join(bookinfo, "networking/destination-rule-all.yaml"),
		filepath.Join(bookinfo, "networking/virtual-service-reviews-80-20.yaml"),
	}
	for _, f := range files {
		if _, err := os.Stat(f); err != nil {
			t.Fatalf("Istio samples not found (%v); they live in shared/testdata beside the repo", err)
		}
	}
	return files
}

func runCmd(args ...string) (code int, stdout, stderr string) {
	var o, e bytes.Buffer
	code = run(args, &o, &e)
	return code, o.String(), e.String()
}

const badConfig = `apiVersion: v1
kind: Service
metadata:
  name: echo
  namespace: shop
spec:
  selector:
    app: echo
  ports:
  - name: grpc
    port: 7070
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: echo
  namespace: shop
spec:
  hosts: [echo]
  http:
  - route:
    - destination:
        host: echo
        subset: v9
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: echo
  namespace: shop
spec:
  host: echo
  subsetz:
  - name: v1
`

func TestAnalyzeReportsBadObjects(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "mesh.yaml"), []byte(badConfig), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, _ := runCmd("analyze", dir)
	if code != 1 {
		t.Fatalf("exit %d, want 1; output:\n%s", code, out)
	}
	file := filepath.Join(dir, "mesh.yaml")
	for _, want := range []string{
		// The loader: unknown field, with file:line of the document, object and field.
		"Error [" + file + ":26] DestinationRule/shop/echo spec.subsetz: unknown field",
		"Error [" + file + ":13] VirtualService/shop/echo",
		// The translator: a route to a subset nobody defines.
		"VirtualService/shop/echo spec.http[0].route[0].destination.subset",
		"v9",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("analyze output lacks %q:\n%s", want, out)
		}
	}
	if i, j := strings.Index(out, "Error"), strings.Index(out, "Warning"); j >= 0 && j < i {
		t.Errorf("warnings before errors:\n%s", out)
	}
}

func TestAnalyzeBookinfo(t *testing.T) {
	files := bookinfoFiles(t)
	code, out, errOut := runCmd(append([]string{"analyze"}, files...)...)
	if code != 0 {
		t.Fatalf("exit %d on the bookinfo sample:\n%s%s", code, out, errOut)
	}
	// Deployments are not read: analyze says so, with file:line.
	if !strings.Contains(out, "Info ["+files[0]+":") || !strings.Contains(out, "Deployment/reviews-v2") {
		t.Fatalf("analyze output:\n%s", out)
	}
	if strings.Contains(out, "Error") {
		t.Fatalf("errors on a good sample:\n%s", out)
	}
}

func TestAnalyzeFolderWithClashingAlternatives(t *testing.T) {
	if _, err := os.Stat(bookinfo); err != nil {
		t.Fatalf("Istio samples not found: %v", err)
	}
	// The whole sample folder defines reviews many times over: each
	// duplicate is an error naming both places.
	code, out, _ := runCmd("analyze", bookinfo)
	if code != 1 || !strings.Contains(out, "VirtualService/default/reviews: duplicate object, first defined at") {
		t.Fatalf("exit %d:\n%s", code, out)
	}
}

func TestTranslateProxylessBookinfo(t *testing.T) {
	files := bookinfoFiles(t)
	code, out, errOut := runCmd(append(append([]string{"translate"}, files...), "--grpc-namespace", "default")...)
	if code != 0 {
		t.Fatalf("exit %d:\n%s", code, errOut)
	}
	var doc struct {
		Proxy     map[string]string
		Listeners []struct{ Name string }
		Routes    []struct {
			Name         string
			VirtualHosts []struct {
				Routes []struct {
					Route struct {
						Cluster          string
						WeightedClusters struct {
							Clusters []struct {
								Name   string
								Weight int
							}
						}
					}
				}
			} `json:"virtualHosts"`
		}
		Clusters []struct{ Name string }
	}
	if err := yaml.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("output is not YAML: %v\n%s", err, out)
	}
	if doc.Proxy["kind"] != "grpc" || doc.Proxy["namespace"] != "default" {
		t.Fatalf("proxy = %v", doc.Proxy)
	}
	hasListener := false
	for _, l := range doc.Listeners {
		hasListener = hasListener || l.Name == "reviews.default.svc.cluster.local:9080"
	}
	if !hasListener {
		t.Fatalf("no API listener for reviews:9080 in %v", doc.Listeners)
	}
	weights := map[string]int{}
	for _, rc := range doc.Routes {
		if rc.Name != "reviews.default.svc.cluster.local:9080" {
			continue
		}
		for _, vh := range rc.VirtualHosts {
			for _, r := range vh.Routes {
				for _, wc := range r.Route.WeightedClusters.Clusters {
					weights[wc.Name] = wc.Weight
				}
			}
		}
	}
	if weights["outbound|9080|v1|reviews.default.svc.cluster.local"] != 80 || weights["outbound|9080|v2|reviews.default.svc.cluster.local"] != 20 {
		t.Fatalf("reviews weights = %v, want v1 80 / v2 20", weights)
	}
}

const nodePods = `apiVersion: v1
kind: Pod
metadata:
  name: reviews-v1-abc
  namespace: default
  labels: {app: reviews, version: v1}
spec:
  nodeName: node-1
  serviceAccountName: bookinfo-reviews
  containers: [{name: reviews, image: reviews}]
status:
  podIP: 10.1.0.5
`

func TestTranslateNode(t *testing.T) {
	files := bookinfoFiles(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "pods.yaml"), []byte(nodePods), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := runCmd(append(append([]string{"translate", dir}, files...), "--node", "node-1")...)
	if code != 0 {
		t.Fatalf("exit %d:\n%s", code, errOut)
	}
	var doc map[string]any
	if err := yaml.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatal(err)
	}
	if ls, _ := doc["listeners"].([]any); len(ls) == 0 {
		t.Fatalf("node-1 has a pod in default but got no listeners:\n%s", out)
	}
	if !strings.Contains(out, "10.1.0.5") {
		t.Fatalf("the pod's endpoint is missing:\n%s", out)
	}
	// The node agent's part: the pod's workload with its SPIFFE ID.
	dp, _ := doc["dataplane"].(map[string]any)
	wls, _ := dp["Workload"].([]any)
	if len(wls) != 1 || !strings.Contains(out, "spiffe://cluster.local/ns/default/sa/bookinfo-reviews") {
		t.Fatalf("dataplane workloads = %v", dp["Workload"])
	}
}

func TestTranslateRefusesBadConfig(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "mesh.yaml"), []byte(badConfig), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := runCmd("translate", dir, "--node", "n1")
	if code != 1 || out != "" || !strings.Contains(errOut, "subsetz") {
		t.Fatalf("exit %d, stdout %q, stderr:\n%s", code, out, errOut)
	}
}

func TestUsage(t *testing.T) {
	for _, args := range [][]string{nil, {"frobnicate"}, {"analyze"}, {"translate", "dir"}} {
		if code, _, _ := runCmd(args...); code != 2 {
			t.Errorf("meshctl %v: exit %d, want 2", args, code)
		}
	}
}

// TestProxyStatus asks a running control plane (meshd's wiring) for the
// sync status of a node that connected over real ADS.
func TestProxyStatus(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "pods.yaml"), []byte(nodePods), 0o644); err != nil {
		t.Fatal(err)
	}
	cp, err := xds.StartControlPlane(xds.ControlPlaneConfig{ConfigDir: dir, XDSAddr: "127.0.0.1:0", DebugAddr: "127.0.0.1:0",
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer cp.Stop()
	conn, err := grpc.NewClient(cp.XDSAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "node-1"}, TypeUrl: resourcev3.ListenerType}); err != nil {
		t.Fatal(err)
	}
	r, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ListenerType, VersionInfo: r.GetVersionInfo(), ResponseNonce: r.GetNonce()}); err != nil {
		t.Fatal(err)
	}
	want := "SYNCED (sent " + r.GetVersionInfo() + ", acked " + r.GetVersionInfo() + ")"
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		code, out, errOut := runCmd("proxy-status", "--addr", cp.DebugAddr())
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errOut)
		}
		if strings.Contains(out, "node-1") && strings.Contains(out, want) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("proxy-status never showed the ACK (%s):\n%s", want, out)
		}
	}
	if code, _, errOut := runCmd("proxy-status", "--addr", "127.0.0.1:1"); code != 1 || !strings.Contains(errOut, "ask meshd") {
		t.Fatalf("unreachable meshd: exit %d, %s", code, errOut)
	}
}

// TestDemoMesh keeps the `make demo` configuration (cmd/meshd/demo) clean
// and serving something to its node.
func TestDemoMesh(t *testing.T) {
	const demo = "../meshd/demo"
	if code, out, errOut := runCmd("analyze", demo); code != 0 || !strings.Contains(out, "No validation issues") {
		t.Fatalf("analyze demo: exit %d\n%s%s", code, out, errOut)
	}
	code, out, errOut := runCmd("translate", demo, "--node", "demo")
	if code != 0 {
		t.Fatalf("translate demo: exit %d\n%s", code, errOut)
	}
	var doc struct {
		Listeners []any
		Clusters  []any
		Dataplane map[string][]any
	}
	if err := yaml.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatal(err)
	}
	if len(doc.Listeners) == 0 || len(doc.Clusters) == 0 || len(doc.Dataplane["Workload"]) == 0 || len(doc.Dataplane["Service"]) == 0 {
		t.Fatalf("node demo gets %d listeners, %d clusters, %d workloads, %d services",
			len(doc.Listeners), len(doc.Clusters), len(doc.Dataplane["Workload"]), len(doc.Dataplane["Service"]))
	}
}
