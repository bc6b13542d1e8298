package deploy_test

import (
	"context"
	"io"
	"log/slog"
	"os"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/nodemesh/nodemesh/config"
	"github.com/nodemesh/nodemesh/config/kube"
	"github.com/nodemesh/nodemesh/e2e/kubeapi"
	"github.com/nodemesh/nodemesh/identity"
	"github.com/nodemesh/nodemesh/identity/kubetoken"
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
	checkNamed := func(t *testing.T, ns, group, resource, name, verb string, allowed bool) {
		t.Helper()
		sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
			User: meshdUser, Groups: []string{"system:serviceaccounts", "system:authenticated"},
			ResourceAttributes: &authorizationv1.ResourceAttributes{Namespace: ns, Group: group, Resource: resource, Name: name, Verb: verb},
		}}
		got, err := kc.AuthorizationV1().SubjectAccessReviews().Create(ctx, sar, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if got.Status.Allowed != allowed {
			t.Errorf("meshd %s %s.%s %q in %q: allowed=%v, want %v", verb, resource, group, name, ns, got.Status.Allowed, allowed)
		}
	}
	check := func(t *testing.T, ns, group, resource, verb string, allowed bool) {
		t.Helper()
		checkNamed(t, ns, group, resource, "", verb, allowed)
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
			{"", "authentication.k8s.io", "tokenreviews", "create", true},
			{"", "authentication.k8s.io", "tokenreviews", "list", false},
			{"", "authorization.k8s.io", "subjectaccessreviews", "create", false},
			{"", "", "serviceaccounts/token", "create", false},
			{releaseNS, "", "configmaps", "create", true},
			{releaseNS, "", "configmaps", "list", false},
			{"default", "", "configmaps", "create", false},
		} {
			check(t, c.ns, c.group, c.resource, c.verb, c.allowed)
		}
		for _, c := range []struct {
			name, verb string
			allowed    bool
		}{
			{kubetoken.DefaultRootCertConfigMap, "get", true},
			{kubetoken.DefaultRootCertConfigMap, "update", true},
			{kubetoken.DefaultRootCertConfigMap, "delete", false},
			{"kube-root-ca.crt", "update", false},
			{"other", "get", false},
		} {
			checkNamed(t, releaseNS, "", "configmaps", c.name, c.verb, c.allowed)
		}
		for _, gr := range kube.WatchedResources() {
			for _, verb := range []string{"get", "list", "watch"} {
				check(t, "", gr.Group, gr.Resource, verb, true)
			}
		}
	})

	// meshd's agent bootstrap under its own RBAC: it publishes the bundle
	// ConfigMap the DaemonSet mounts and reviews a token of a mesh-agent
	// pod (as the DaemonSet's projected volume gets it) into the agent
	// identity of the pod's node.
	t.Run("agent bootstrap runs as meshd", func(t *testing.T) {
		asMeshd := rest.CopyConfig(srv.Config)
		asMeshd.Impersonate = rest.ImpersonationConfig{UserName: meshdUser,
			Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + releaseNS, "system:authenticated"}}
		meshdClient, err := kubernetes.NewForConfig(asMeshd)
		if err != nil {
			t.Fatal(err)
		}
		ca, err := identity.NewCA(identity.CAConfig{Dir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		pub, err := kubetoken.NewBundlePublisher(kubetoken.PublisherConfig{Client: meshdClient, Namespace: releaseNS,
			Name: configMapMountedBy(t, objs, "DaemonSet", "mesh-agent"), Bundle: ca})
		if err != nil {
			t.Fatal(err)
		}
		for i, want := range []bool{true, false} { // created, then unchanged
			if wrote, err := pub.Publish(ctx); err != nil || wrote != want {
				t.Fatalf("publish %d under meshd's RBAC: wrote=%v, %v; want wrote=%v", i, wrote, err, want)
			}
		}
		if _, err := ca.RotateRoot(); err != nil {
			t.Fatal(err)
		}
		if wrote, err := pub.Publish(ctx); err != nil || !wrote {
			t.Fatalf("publish after a root rotation under meshd's RBAC: wrote=%v, %v", wrote, err)
		}

		token := agentPodToken(t, kc, objs)
		auth, err := kubetoken.New(kubetoken.Config{Client: meshdClient, ServiceAccount: releaseNS + "/mesh-agent",
			TrustDomain: ca.TrustDomain()})
		if err != nil {
			t.Fatal(err)
		}
		caller, err := auth.AuthenticateToken(ctx, token)
		if err != nil || caller.Node != "node-a" || caller.ID != identity.AgentID(ca.TrustDomain()) {
			t.Fatalf("review of a mesh-agent pod's token under meshd's RBAC: %+v, %v; want the agent of node-a", caller, err)
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

// configMapMountedBy is the ConfigMap the workload's pods mount.
func configMapMountedBy(t *testing.T, objs []*unstructured.Unstructured, kind, name string) string {
	t.Helper()
	o := find(objs, kind, name)
	if o == nil {
		t.Fatalf("%s/%s not applied", kind, name)
	}
	vols, _, _ := unstructured.NestedSlice(o.Object, "spec", "template", "spec", "volumes")
	for _, v := range vols {
		if cm, ok, _ := unstructured.NestedString(v.(map[string]any), "configMap", "name"); ok {
			return cm
		}
	}
	t.Fatalf("%s/%s mounts no ConfigMap", kind, name)
	return ""
}

// agentPodToken creates a pod from the mesh-agent DaemonSet's template on
// node-a (no controller or kubelet runs here) and requests the token its
// projected volume would hold.
func agentPodToken(t *testing.T, kc kubernetes.Interface, objs []*unstructured.Unstructured) string {
	t.Helper()
	ctx := t.Context()
	ds := find(objs, "DaemonSet", "mesh-agent")
	var spec corev1.PodSpec
	raw, _, _ := unstructured.NestedMap(ds.Object, "spec", "template", "spec")
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(raw, &spec); err != nil {
		t.Fatal(err)
	}
	var src *corev1.ServiceAccountTokenProjection
	for _, v := range spec.Volumes {
		if v.Projected != nil {
			for _, s := range v.Projected.Sources {
				if s.ServiceAccountToken != nil {
					src = s.ServiceAccountToken
				}
			}
		}
	}
	if src == nil {
		t.Fatal("the mesh-agent DaemonSet has no projected service account token")
	}
	if _, err := kc.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	spec.NodeName = "node-a"
	pod, err := kc.CoreV1().Pods(releaseNS).Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "mesh-agent-test"}, Spec: spec}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("pod from the mesh-agent template: %v", err)
	}
	tr, err := kc.CoreV1().ServiceAccounts(releaseNS).CreateToken(ctx, spec.ServiceAccountName, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{Audiences: []string{src.Audience}, ExpirationSeconds: src.ExpirationSeconds,
			BoundObjectRef: &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return tr.Status.Token
}
