package deploy_test

import (
	"context"
	"io"
	"log/slog"
	"os"
	"testing"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/nodemesh/nodemesh/config"
	"github.com/nodemesh/nodemesh/config/kube"
	"github.com/nodemesh/nodemesh/e2e/kubeapi"
)

const meshdUser = "system:serviceaccount:" + releaseNS + ":meshd"

// The checked-in manifests are accepted by a real API server, and meshd's
// RBAC is what the Kubernetes source needs: it syncs, wins the Lease and
// writes an Event under meshd's ServiceAccount, and may do nothing more.
func TestManifestsApply(t *testing.T) {
	data, err := os.ReadFile(manifestsFile)
	if err != nil {
		t.Fatal(err)
	}
	srv := kubeapi.Start(t)
	srv.InstallCRDs(t)
	ctx := t.Context()
	// Every object with dryRun=All first (validation and admission, nothing
	// stored; the namespace must exist for that), then for real.
	if _, err := srv.Apply(ctx, []byte("{apiVersion: v1, kind: Namespace, metadata: {name: "+releaseNS+"}}"), kubeapi.ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	dry, err := srv.Apply(ctx, data, kubeapi.ApplyOptions{DryRun: true})
	if err != nil {
		t.Fatalf("dry-run apply: %v", err)
	}
	if d := find(dry, "DaemonSet", "mesh-agent"); d == nil || d.GetUID() == "" {
		t.Errorf("dry-run apply did not return the admitted DaemonSet")
	}
	objs, err := srv.Apply(ctx, data, kubeapi.ApplyOptions{})
	if err != nil {
		t.Fatalf("apply %s: %v", manifestsFile, err)
	}
	t.Logf("API server accepted %d objects", len(objs))

	kc, err := kubernetes.NewForConfig(srv.Config)
	if err != nil {
		t.Fatal(err)
	}
	check := func(t *testing.T, ns, group, resource, verb string, allowed bool) {
		t.Helper()
		sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
			User: meshdUser, Groups: []string{"system:serviceaccounts", "system:authenticated"},
			ResourceAttributes: &authorizationv1.ResourceAttributes{Namespace: ns, Group: group, Resource: resource, Verb: verb},
		}}
		got, err := kc.AuthorizationV1().SubjectAccessReviews().Create(ctx, sar, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if got.Status.Allowed != allowed {
			t.Errorf("meshd %s %s.%s in %q: allowed=%v, want %v", verb, resource, group, ns, got.Status.Allowed, allowed)
		}
	}
	t.Run("RBAC", func(t *testing.T) {
		for _, c := range []struct {
			ns, group, resource, verb string
			allowed                   bool
		}{
			{"", "networking.istio.io", "virtualservices", "watch", true},
			{"", "security.istio.io", "authorizationpolicies", "list", true},
			{"", "split.smi-spec.io", "trafficsplits", "list", true},
			{"", "", "pods", "watch", true},
			{"", "discovery.k8s.io", "endpointslices", "list", true},
			{"default", "", "events", "create", true},
			{releaseNS, "coordination.k8s.io", "leases", "create", true},
			{"", "", "pods", "delete", false},
			{"", "", "secrets", "get", false},
			{"", "networking.istio.io", "virtualservices", "update", false},
			{"default", "coordination.k8s.io", "leases", "create", false},
		} {
			check(t, c.ns, c.group, c.resource, c.verb, c.allowed)
		}
		for _, gr := range kube.WatchedResources() {
			for _, verb := range []string{"get", "list", "watch"} {
				check(t, "", gr.Group, gr.Resource, verb, true)
			}
		}
	})

	t.Run("source runs as meshd", func(t *testing.T) {
		if _, err := srv.Apply(ctx, []byte(badSplit), kubeapi.ApplyOptions{}); err != nil {
			t.Fatal(err)
		}
		asMeshd := rest.CopyConfig(srv.Config)
		asMeshd.Impersonate = rest.ImpersonationConfig{UserName: meshdUser,
			Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + releaseNS, "system:authenticated"}}
		store := config.NewStore()
		src, err := kube.New(kube.Config{RESTConfig: asMeshd, Store: store,
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
			LeaderElection: &kube.LeaderElection{Namespace: releaseNS, Name: "nodemesh-meshd", Identity: "meshd-0",
				LeaseDuration: 3 * time.Second, RenewDeadline: 2 * time.Second, RetryPeriod: 500 * time.Millisecond}})
		if err != nil {
			t.Fatal(err)
		}
		runCtx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- src.Run(runCtx) }()
		defer func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		}()
		syncCtx, cancelSync := context.WithTimeout(ctx, 30*time.Second)
		defer cancelSync()
		if err := src.WaitForSync(syncCtx); err != nil {
			t.Fatalf("source under meshd's RBAC: %v", err)
		}
		if n := len(store.Snapshot().List(config.KindService)); n < 3 { // kubernetes, meshd, meshd-debug
			t.Errorf("store has %d Services, want >= 3", n)
		}
		sel := fields.Set{"involvedObject.name": "bad-split", "reason": kube.EventReason}.AsSelector().String()
		deadline := time.Now().Add(20 * time.Second)
		for {
			list, err := kc.CoreV1().Events("default").List(ctx, metav1.ListOptions{FieldSelector: sel})
			if err != nil {
				t.Fatal(err)
			}
			if len(list.Items) > 0 {
				if list.Items[0].Type != corev1.EventTypeWarning {
					t.Errorf("event type %s", list.Items[0].Type)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("no InvalidConfig event written under meshd's RBAC within 20s")
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
}

const badSplit = `
apiVersion: split.smi-spec.io/v1alpha4
kind: TrafficSplit
metadata: {name: bad-split, namespace: default}
spec:
  service: reviews
  backends:
  - {service: reviews-v1, wieght: 80}
`
