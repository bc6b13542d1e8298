package ads

import (
	"context"
	"fmt"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
)

// handle stages one response and commits it.
func (c *Client) handle(ctx context.Context, stream deltaSender, st *streamState, resp *discovery.DeltaDiscoveryResponse) error {
	if err := c.stage(stream, st, resp); err != nil {
		return err
	}
	return c.commit(ctx, stream, st)
}

// stage folds one response into the staged set, or NACKs it at once when
// it cannot be decoded. It returns an error only when the stream broke.
func (c *Client) stage(stream deltaSender, st *streamState, resp *discovery.DeltaDiscoveryResponse) error {
	p := pending{typeURL: resp.GetTypeUrl(), nonce: resp.GetNonce(), version: resp.GetSystemVersionInfo()}
	d, err := decodeDelta(resp)
	if err != nil {
		c.rejected++
		c.log.Error("rejecting ads response", "type_url", p.typeURL, "version", p.version, "nonce", p.nonce, "error", err)
		return c.nack(stream, st, []pending{p}, err)
	}
	if st.staged == nil {
		st.staged = newStage(c.applied)
	}
	if st.staged.apply(d) {
		st.changed = true
	}
	p.delta = d
	st.pending = append(st.pending, p)
	if !c.synced {
		st.seen[d.typeURL] = true
	}
	return nil
}

// commit applies the staged set when it is complete and ACKs or NACKs every
// response staged since the last commit. It returns an error only when the
// stream broke.
func (c *Client) commit(ctx context.Context, stream deltaSender, st *streamState) error {
	if len(st.pending) == 0 {
		return nil
	}
	changed := st.changed
	if !c.synced {
		for _, t := range c.cfg.Types {
			if !st.seen[t] {
				c.log.Debug("waiting for every type before the first apply", "missing", t)
				return nil
			}
		}
		changed = true // the first full set is always applied
	}
	ps, keep := st.pending, st.staged
	staged := keep.set
	st.pending, st.staged, st.changed = nil, nil, false
	if !changed {
		c.log.Debug("ads responses change nothing; acking without apply", "responses", len(ps))
		return c.ack(stream, st, ps, staged, false)
	}
	start := time.Now()
	desired := staged.resources()
	if err := c.cfg.Applier.Apply(ctx, desired); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if !c.synced {
			// Keep the full set: the control plane will not resend it, and
			// applying a later delta over nothing would program a partial set.
			c.rejected++
			c.log.Error("first apply failed; the dataplane keeps what it had", "error", err, "failures", c.rejected)
			st.staged, st.changed = keep, true
			return c.nack(stream, st, ps, err)
		}
		if len(ps) > 1 {
			// Several responses were folded together: apply them one at a
			// time so that a bad one does not hold the others back.
			c.log.Warn("apply of coalesced responses failed; applying them one by one", "error", err, "responses", len(ps))
			return c.commitEach(ctx, stream, st, ps)
		}
		c.rejected++
		c.log.Error("apply failed; keeping the previous dataplane state", "error", err, "failures", c.rejected)
		return c.nack(stream, st, ps, err)
	}
	c.log.Info("applied dataplane resources", "resources", desired.Len(), "responses", len(ps), "took", time.Since(start))
	return c.ack(stream, st, ps, staged, true)
}

// commitEach applies responses one at a time over the applied set,
// ACKing each that applies and NACKing each that fails.
func (c *Client) commitEach(ctx context.Context, stream deltaSender, st *streamState, ps []pending) error {
	failed := false
	defer func() {
		if failed {
			c.rejected++
		}
	}()
	for _, p := range ps {
		stg := newStage(c.applied)
		if !stg.apply(p.delta) {
			if err := c.ack(stream, st, []pending{p}, stg.set, false); err != nil {
				return err
			}
			continue
		}
		if err := c.cfg.Applier.Apply(ctx, stg.set.resources()); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			failed = true
			c.log.Error("apply failed; keeping the previous dataplane state", "error", err, "type_url", p.typeURL, "nonce", p.nonce)
			if err := c.nack(stream, st, []pending{p}, err); err != nil {
				return err
			}
			continue
		}
		if err := c.ack(stream, st, []pending{p}, stg.set, true); err != nil {
			return err
		}
	}
	return nil
}

// ack records staged as applied and ACKs ps. A stream whose every type was
// ACKed with no NACK is in sync with the control plane: an earlier
// rejection is healed.
func (c *Client) ack(stream deltaSender, st *streamState, ps []pending, staged resourceSet, applied bool) error {
	c.applied = staged
	c.synced = true
	now := time.Now()
	for _, p := range ps {
		if err := stream.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: p.typeURL, ResponseNonce: p.nonce}); err != nil {
			return fmt.Errorf("acking %s nonce %s: %w", p.typeURL, p.nonce, err)
		}
		st.acked[p.typeURL] = true
		c.status.update(func(s *Status) { s.Synced = true })
		c.status.updateType(p.typeURL, func(ts *TypeStatus) {
			ts.Version, ts.Nonce, ts.LastAck = p.version, p.nonce, now
			ts.Acks++
			if applied {
				ts.Applies++
			}
		})
	}
	for t, m := range c.applied {
		c.status.updateType(t, func(ts *TypeStatus) { ts.Resources = len(m) })
	}
	if c.rejected > 0 && !st.nacked && len(st.acked) >= len(c.cfg.Types) {
		c.log.Info("in sync with the control plane again", "failures", c.rejected)
		c.rejected = 0
	}
	return nil
}

// nack NACKs ps with cause; the rejection stays unhealed until a stream
// syncs cleanly (see ack).
func (c *Client) nack(stream deltaSender, st *streamState, ps []pending, cause error) error {
	st.nacked = true
	now := time.Now()
	msg := cause.Error()
	for _, p := range ps {
		req := &discovery.DeltaDiscoveryRequest{
			TypeUrl:       p.typeURL,
			ResponseNonce: p.nonce,
			ErrorDetail:   &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: msg},
		}
		if err := stream.Send(req); err != nil {
			return fmt.Errorf("nacking %s nonce %s: %w", p.typeURL, p.nonce, err)
		}
		c.status.updateType(p.typeURL, func(ts *TypeStatus) {
			ts.LastNack, ts.LastNackNonce, ts.LastNackTime = msg, p.nonce, now
			ts.Nacks++
		})
	}
	return nil
}
