package ads

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"testing"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	dataplanev1 "github.com/nodemesh/nodemesh/api/dataplane/v1"
)

// recordingSender keeps the requests the client sends.
type recordingSender struct {
	reqs []*discovery.DeltaDiscoveryRequest
}

func (r *recordingSender) Send(req *discovery.DeltaDiscoveryRequest) error {
	r.reqs = append(r.reqs, req)
	return nil
}

func deltaResponse(t *testing.T, typ, nonce string, removed []string, named map[string]proto.Message) *discovery.DeltaDiscoveryResponse {
	t.Helper()
	resp := &discovery.DeltaDiscoveryResponse{TypeUrl: typ, Nonce: nonce, RemovedResources: removed}
	for name, m := range named {
		body, err := anypb.New(m)
		if err != nil {
			t.Fatal(err)
		}
		resp.Resources = append(resp.Resources, &discovery.Resource{Name: name, Version: nonce, Resource: body})
	}
	return resp
}

// TestCommitCoalescesStagedResponses checks the client's state machine
// directly: responses staged together are applied once and each is ACKed
// (or all are NACKed) with its own nonce.
func TestCommitCoalescesStagedResponses(t *testing.T) {
	app := &fakeApplier{}
	c, err := New(Config{Node: "node-a", ControlPlane: "x:1", Applier: app, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	c.synced = true // as after the initial sync
	send := &recordingSender{}
	st := newStreamState()
	ctx := context.Background()

	stage := func(resp *discovery.DeltaDiscoveryResponse) {
		t.Helper()
		if err := c.stage(send, st, resp); err != nil {
			t.Fatal(err)
		}
	}
	stage(deltaResponse(t, dataplanev1.WorkloadType, "w1", nil, map[string]proto.Message{"shop/web-0": testWorkload("shop", "web-0", "10.0.1.5", 100)}))
	stage(deltaResponse(t, dataplanev1.ServiceType, "s1", nil, map[string]proto.Message{"shop/web:80/TCP": testService("shop", "web", 80, "10.0.1.5")}))
	if err := c.commit(ctx, send, st); err != nil {
		t.Fatal(err)
	}
	if calls, got := app.state(); calls != 1 || len(got.Workloads) != 1 || len(got.Services) != 1 {
		t.Fatalf("Apply calls %d with %d workloads / %d services, want 1 call with both", calls, len(got.Workloads), len(got.Services))
	}
	if len(send.reqs) != 2 || send.reqs[0].GetResponseNonce() != "w1" || send.reqs[1].GetResponseNonce() != "s1" ||
		send.reqs[0].GetErrorDetail() != nil || send.reqs[1].GetErrorDetail() != nil {
		t.Fatalf("sent %v, want ACKs of w1 and s1", send.reqs)
	}

	// Both NACKed when the coalesced apply fails; the applied set stays.
	send.reqs = nil
	app.setFail(func(*Resources) error { return errors.New("map full") })
	stage(deltaResponse(t, dataplanev1.WorkloadType, "w2", []string{"shop/web-0"}, nil))
	stage(deltaResponse(t, dataplanev1.PolicyType, "p2", nil, map[string]proto.Message{"shop/p": &dataplanev1.Policy{Action: dataplanev1.Action_DENY}}))
	if err := c.commit(ctx, send, st); err != nil {
		t.Fatal(err)
	}
	if len(send.reqs) != 2 || send.reqs[0].GetErrorDetail().GetMessage() != "map full" || send.reqs[1].GetResponseNonce() != "p2" || send.reqs[1].GetErrorDetail().GetMessage() != "map full" {
		t.Fatalf("sent %v, want NACKs of w2 and p2 with 'map full'", send.reqs)
	}
	if len(c.applied[dataplanev1.WorkloadType]) != 1 || len(c.applied[dataplanev1.PolicyType]) != 0 {
		t.Errorf("held set changed by a failed apply: %v", c.applied)
	}

	// A response changing nothing is ACKed without Apply.
	send.reqs = nil
	app.setFail(nil)
	calls, _ := app.state()
	stage(deltaResponse(t, dataplanev1.WorkloadType, "w3", []string{"shop/not-held"}, nil))
	if err := c.commit(ctx, send, st); err != nil {
		t.Fatal(err)
	}
	if after, _ := app.state(); after != calls {
		t.Errorf("Apply called for a response that changes nothing")
	}
	if len(send.reqs) != 1 || send.reqs[0].GetResponseNonce() != "w3" || send.reqs[0].GetErrorDetail() != nil {
		t.Errorf("sent %v, want an ACK of w3", send.reqs)
	}

	// An undecodable response is NACKed at once, naming the resource.
	send.reqs = nil
	bad := deltaResponse(t, dataplanev1.ServiceType, "s4", nil, map[string]proto.Message{"shop/x:1/TCP": testWorkload("shop", "x", "10.0.0.1", 5)})
	stage(bad)
	if len(send.reqs) != 1 || send.reqs[0].GetErrorDetail().GetMessage() != `type.googleapis.com/nodemesh.dataplane.v1.Service "shop/x:1/TCP": body has type "type.googleapis.com/nodemesh.dataplane.v1.Workload"` {
		t.Errorf("sent %v, want a NACK naming shop/x:1/TCP and its body type", send.reqs)
	}
}

// TestCommitIsolatesABadResponse: when a coalesced Apply fails, the
// responses are applied one at a time, so the good one is not held back by
// the bad one.
func TestCommitIsolatesABadResponse(t *testing.T) {
	app := &fakeApplier{fail: func(r *Resources) error {
		if _, ok := r.Services["shop/bad:1/TCP"]; ok {
			return errors.New("service shop/bad:1/TCP: bad")
		}
		return nil
	}}
	c, err := New(Config{Node: "node-a", ControlPlane: "x:1", Applier: app, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	c.synced = true
	send := &recordingSender{}
	st := newStreamState()
	for _, resp := range []*discovery.DeltaDiscoveryResponse{
		deltaResponse(t, dataplanev1.ServiceType, "s1", nil, map[string]proto.Message{"shop/bad:1/TCP": testService("shop", "bad", 1)}),
		deltaResponse(t, dataplanev1.WorkloadType, "w1", nil, map[string]proto.Message{"shop/web-0": testWorkload("shop", "web-0", "10.0.1.5", 100)}),
	} {
		if err := c.stage(send, st, resp); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.commit(context.Background(), send, st); err != nil {
		t.Fatal(err)
	}
	if len(send.reqs) != 2 || send.reqs[0].GetResponseNonce() != "s1" || send.reqs[0].GetErrorDetail().GetMessage() != "service shop/bad:1/TCP: bad" ||
		send.reqs[1].GetResponseNonce() != "w1" || send.reqs[1].GetErrorDetail() != nil {
		t.Fatalf("sent %v, want a NACK of s1 and an ACK of w1", send.reqs)
	}
	if _, got := app.state(); len(got.Workloads) != 1 || len(got.Services) != 0 {
		t.Errorf("applied %d workloads / %d services, want the workload alone", len(got.Workloads), len(got.Services))
	}
	if c.rejected != 1 {
		t.Errorf("rejected = %d, want 1 (a retry is due)", c.rejected)
	}
}

// TestCleanResyncHealsRejection: a stream on which every type was ACKed and
// nothing NACKed is in sync, even when nothing had to be applied (the bad
// resource was removed meanwhile); a stream with a NACK is not.
func TestCleanResyncHealsRejection(t *testing.T) {
	app := &fakeApplier{}
	c, err := New(Config{Node: "node-a", ControlPlane: "x:1", Applier: app, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	c.synced, c.rejected = true, 2
	send := &recordingSender{}

	st := newStreamState()
	for i, typ := range dataplanev1.Types {
		if err := c.handle(context.Background(), send, st, deltaResponse(t, typ, fmt.Sprint("n", i), []string{"gone"}, nil)); err != nil {
			t.Fatal(err)
		}
		if i < len(dataplanev1.Types)-1 && c.rejected != 2 {
			t.Fatalf("rejection healed after %d of %d types", i+1, len(dataplanev1.Types))
		}
	}
	if c.rejected != 0 {
		t.Errorf("rejected = %d after a clean resync, want 0", c.rejected)
	}
	if calls, _ := app.state(); calls != 0 {
		t.Errorf("Apply called %d times for responses that change nothing", calls)
	}

	// With a NACK on the stream, ACKs of every type do not heal.
	c.rejected = 1
	st = newStreamState()
	bad := deltaResponse(t, dataplanev1.ServiceType, "bad", nil, map[string]proto.Message{"x": testWorkload("x", "y", "10.0.0.1", 5)})
	if err := c.handle(context.Background(), send, st, bad); err != nil {
		t.Fatal(err)
	}
	for i, typ := range dataplanev1.Types {
		if err := c.handle(context.Background(), send, st, deltaResponse(t, typ, fmt.Sprint("m", i), nil, nil)); err != nil {
			t.Fatal(err)
		}
	}
	if c.rejected == 0 {
		t.Errorf("a stream with a NACK healed the rejection")
	}
}
