package kubeapi_test

import (
	"context"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/nodemesh/nodemesh/e2e/kubeapi"
)

// The API server starts, reports the built version, and validates Istio
// resources against the installed CRDs; SMI resources keep unknown fields.
func TestServer(t *testing.T) {
	srv := kubeapi.Start(t)
	kc, err := kubernetes.NewForConfig(srv.Config)
	if err != nil {
		t.Fatal(err)
	}
	v, err := kc.Discovery().ServerVersion()
	if err != nil {
		t.Fatalf("server version: %v", err)
	}
	if v.GitVersion != kubeapi.APIServerVersion {
		t.Errorf("server version %q, want %q", v.GitVersion, kubeapi.APIServerVersion)
	}
	srv.InstallCRDs(t)
	ctx := context.Background()
	crds, err := srv.Apply(ctx, kubeapi.SMICRDs(), kubeapi.ApplyOptions{DryRun: true})
	if err != nil || len(crds) != 4 {
		t.Fatalf("re-apply SMI CRDs: %d objects, %v", len(crds), err)
	}

	tests := []struct {
		name, yaml string
		wantErr    string // substring; "" means accepted
	}{
		{"valid VirtualService", `
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
      weight: 80
    - destination: {host: reviews, subset: v2}
      weight: 20
`, ""},
		{"unknown Istio field", `
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: typo}
spec:
  hosts: [reviews]
  http:
  - rout: []
`, "rout"},
		{"wrong-typed Istio field", `
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: wrong}
spec:
  host: reviews
  subsets: [{name: v1, labels: {version: 1}}]
`, "labels"},
		{"SMI keeps unknown fields", `
apiVersion: split.smi-spec.io/v1alpha4
kind: TrafficSplit
metadata: {name: split}
spec:
  service: reviews
  backends: [{service: reviews-v1, wieght: 1}]
`, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			objs, err := srv.Apply(ctx, []byte(tc.yaml), kubeapi.ApplyOptions{})
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("apply: %v", err)
			case tc.wantErr != "" && err == nil:
				t.Fatalf("apply: accepted, want an error naming %q", tc.wantErr)
			case tc.wantErr != "" && !strings.Contains(err.Error(), tc.wantErr):
				t.Fatalf("apply: error %q does not name %q", err, tc.wantErr)
			case tc.wantErr == "" && (len(objs) != 1 || objs[0].GetUID() == ""):
				t.Fatalf("apply: got %d objects, want 1 stored", len(objs))
			}
		})
	}
	got, err := kc.CoreV1().Namespaces().Get(ctx, "default", metav1.GetOptions{})
	if err != nil || got.Name != "default" {
		t.Errorf("default namespace: %v", err)
	}
}
