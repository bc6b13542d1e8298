package kube_test

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"

	"github.com/nodemesh/nodemesh/config"
	"github.com/nodemesh/nodemesh/config/kube"
	"github.com/nodemesh/nodemesh/e2e/kubeapi"
)

// Two replicas: both read and serve the same objects, one writes; the
// invalid object gets one Event, not one per replica; when the leader stops,
// the other takes over the writing.
func TestTwoReplicas(t *testing.T) {
	srv := kubeapi.Start(t)
	srv.InstallCRDs(t)
	kc, err := kubernetes.NewForConfig(srv.Config)
	if err != nil {
		t.Fatal(err)
	}
	apply(t, srv, readSample(t, "networking/virtual-service-reviews-80-20.yaml"))
	apply(t, srv, []byte(smiBad))

	type replica struct {
		src    *kube.Source
		store  *config.Store
		cancel context.CancelFunc
		done   chan error
	}
	start := func(id string) *replica {
		r := &replica{store: config.NewStore(), done: make(chan error, 1)}
		r.src, err = kube.New(kube.Config{RESTConfig: srv.Config, Store: r.store,
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
			LeaderElection: &kube.LeaderElection{Namespace: "default", Identity: id,
				LeaseDuration: 2 * time.Second, RenewDeadline: 1500 * time.Millisecond, RetryPeriod: 200 * time.Millisecond}})
		if err != nil {
			t.Fatal(err)
		}
		var ctx context.Context
		ctx, r.cancel = context.WithCancel(context.Background())
		go func() { r.done <- r.src.Run(ctx) }()
		t.Cleanup(func() { r.cancel(); <-r.done })
		syncCtx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		if err := r.src.WaitForSync(syncCtx); err != nil {
			t.Fatal(err)
		}
		return r
	}
	rs := []*replica{start("replica-0"), start("replica-1")}
	vs := config.Key{Kind: config.KindVirtualService, Namespace: "default", Name: "reviews"}
	for i, r := range rs {
		if _, ok := r.store.Snapshot().Get(vs); !ok {
			t.Errorf("replica %d does not serve %v", i, vs)
		}
	}
	ev := waitEvent(t, kc, "bad-split")
	var leader, follower *replica
	for _, r := range rs {
		if r.src.IsLeader() {
			leader = r
		} else {
			follower = r
		}
	}
	if leader == nil || follower == nil {
		t.Fatalf("want one leader and one follower, got leaders: %v, %v", rs[0].src.IsLeader(), rs[1].src.IsLeader())
	}
	time.Sleep(time.Second) // time for a wrong second write to show up
	if n := countEvents(t, kc, "bad-split"); n != 1 {
		t.Errorf("%d events on bad-split, want 1 (written by %s)", n, ev.ReportingInstance)
	}

	leader.cancel() // releases the Lease
	if err := <-leader.done; err != nil {
		t.Errorf("leader Run: %v", err)
	}
	leader.done <- nil // for the cleanup
	deadline := time.Now().Add(15 * time.Second)
	for !follower.src.IsLeader() {
		if time.Now().After(deadline) {
			t.Fatal("follower did not take over the Lease within 15s")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if n := countEvents(t, kc, "bad-split"); n != 1 {
		t.Errorf("%d events on bad-split after failover, want 1: the new leader must not report a revision again", n)
	}
	// A new revision of the bad object is reported by the new leader.
	objs, err := srv.Apply(t.Context(), []byte(smiBad+"  - {service: reviews-v2, wieght: 20}\n"), kubeapi.ApplyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rv := objs[0].GetResourceVersion()
	deadline = time.Now().Add(15 * time.Second)
	for {
		list, err := kc.CoreV1().Events("default").List(t.Context(), metav1.ListOptions{
			FieldSelector: fields.Set{"involvedObject.name": "bad-split", "involvedObject.resourceVersion": rv}.AsSelector().String()})
		if err != nil {
			t.Fatal(err)
		}
		if len(list.Items) == 1 {
			if got := list.Items[0].ReportingInstance; got == ev.ReportingInstance {
				t.Errorf("event for the new revision written by %s, the old leader", got)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("new leader wrote %d events for revision %s within 15s, want 1", len(list.Items), rv)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func countEvents(t *testing.T, kc kubernetes.Interface, name string) int {
	t.Helper()
	sel := fields.Set{"involvedObject.name": name, "reason": kube.EventReason}.AsSelector().String()
	list, err := kc.CoreV1().Events("default").List(t.Context(), metav1.ListOptions{FieldSelector: sel})
	if err != nil {
		t.Fatal(err)
	}
	return len(list.Items)
}
