package kubetoken

import (
	"context"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/nodemesh/nodemesh/identity"
)

// The ConfigMap follows the bundle: created, left alone while equal,
// updated after a root rotation, re-created after deletion. The real API
// server and RBAC are exercised in e2e/kubeapi and deploy/.
func TestBundlePublisher(t *testing.T) {
	ca, err := identity.NewCA(identity.CAConfig{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	client := fake.NewClientset()
	p, err := NewBundlePublisher(PublisherConfig{Client: client, Namespace: "nodemesh", Name: DefaultRootCertConfigMap, Bundle: ca})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	published := func(t *testing.T, want *x509bundle.Bundle) {
		t.Helper()
		cm, err := client.CoreV1().ConfigMaps("nodemesh").Get(ctx, DefaultRootCertConfigMap, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		got, err := identity.ParseCertsPEM([]byte(cm.Data[RootCertKey]))
		if err != nil {
			t.Fatal(err)
		}
		if !x509bundle.FromX509Authorities(want.TrustDomain(), got).Equal(want) {
			t.Fatalf("configmap holds %d roots, not the bundle's %d", len(got), len(want.X509Authorities()))
		}
	}
	for _, step := range []struct {
		name   string
		before func(t *testing.T)
		wrote  bool
	}{
		{"created", func(*testing.T) {}, true},
		{"unchanged", func(*testing.T) {}, false},
		{"root rotated", func(t *testing.T) {
			if _, err := ca.RotateRoot(); err != nil {
				t.Fatal(err)
			}
		}, true},
		{"deleted", func(t *testing.T) {
			if err := client.CoreV1().ConfigMaps("nodemesh").Delete(ctx, DefaultRootCertConfigMap, metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
		}, true},
	} {
		t.Run(step.name, func(t *testing.T) {
			step.before(t)
			wrote, err := p.Publish(ctx)
			if err != nil || wrote != step.wrote {
				t.Fatalf("Publish = %v, %v; want wrote=%v", wrote, err, step.wrote)
			}
			published(t, ca.Bundle())
		})
	}
	if n := len(ca.Bundle().X509Authorities()); n != 2 {
		t.Fatalf("after a rotation the bundle has %d roots, want 2 (old and new)", n)
	}

	// Run publishes at once and returns when ctx ends.
	client2 := fake.NewClientset()
	p2, err := NewBundlePublisher(PublisherConfig{Client: client2, Namespace: "nodemesh", Name: "roots", Bundle: ca, Interval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- p2.Run(runCtx) }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := client2.CoreV1().ConfigMaps("nodemesh").Get(ctx, "roots", metav1.GetOptions{}); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Run did not publish within 5s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
}
