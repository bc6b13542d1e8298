package xds

import (
	"context"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// callbacks connects go-control-plane's stream events to the Server:
// node registration, ACK/NACK tracking and metrics, for SotW and Delta.
type callbacks struct{ s *Server }

var _ serverv3.Callbacks = callbacks{}

// requestInfo is what SotW and Delta requests share for tracking.
type requestInfo struct {
	node      *corev3.Node
	typeURL   string
	nonce     string // response_nonce: the response this request answers
	errDetail *statuspb.Status
}

func (c callbacks) OnStreamOpen(context.Context, int64, string) error {
	c.s.metrics.streams.Add(1)
	return nil
}

func (c callbacks) OnStreamClosed(id int64, _ *corev3.Node) {
	c.s.metrics.streams.Add(-1)
	c.s.streamClosed(streamKey{id: id})
}

func (c callbacks) OnDeltaStreamOpen(context.Context, int64, string) error {
	c.s.metrics.streams.Add(1)
	return nil
}

func (c callbacks) OnDeltaStreamClosed(id int64, _ *corev3.Node) {
	c.s.metrics.streams.Add(-1)
	c.s.streamClosed(streamKey{delta: true, id: id})
}

func (c callbacks) OnStreamRequest(id int64, r *discoveryv3.DiscoveryRequest) error {
	nack, err := c.request(streamKey{id: id}, requestInfo{r.GetNode(), r.GetTypeUrl(), r.GetResponseNonce(), r.GetErrorDetail()})
	if nack != nil {
		// A SotW NACK carries the last version the client accepted, so the
		// snapshot cache would resend the refused version at once, the
		// client would refuse it again, and so on. Treat the refused
		// version as the client's: the next push is the next new version.
		r.VersionInfo = nack.Version
	}
	return err
}

// Delta needs no such care: the cache compares per-resource versions with
// what was sent, NACKed or not.
func (c callbacks) OnStreamDeltaRequest(id int64, r *discoveryv3.DeltaDiscoveryRequest) error {
	_, err := c.request(streamKey{delta: true, id: id}, requestInfo{r.GetNode(), r.GetTypeUrl(), r.GetResponseNonce(), r.GetErrorDetail()})
	return err
}

func (c callbacks) OnStreamResponse(_ context.Context, id int64, _ *discoveryv3.DiscoveryRequest, r *discoveryv3.DiscoveryResponse) {
	c.response(streamKey{id: id}, r.GetTypeUrl(), r.GetNonce(), r.GetVersionInfo(), len(r.GetResources()))
}

func (c callbacks) OnStreamDeltaResponse(id int64, _ *discoveryv3.DeltaDiscoveryRequest, r *discoveryv3.DeltaDiscoveryResponse) {
	c.response(streamKey{delta: true, id: id}, r.GetTypeUrl(), r.GetNonce(), r.GetSystemVersionInfo(), len(r.GetResources()))
}

// REST fetches are not served.
func (callbacks) OnFetchRequest(context.Context, *discoveryv3.DiscoveryRequest) error {
	return status.Error(codes.Unimplemented, "nodemesh serves xds over ADS streams only")
}

func (callbacks) OnFetchResponse(*discoveryv3.DiscoveryRequest, *discoveryv3.DiscoveryResponse) {}

// request registers the stream's node and records what the request
// answers; it returns the NACK, if the request is one.
func (c callbacks) request(key streamKey, r requestInfo) (*NACKError, error) {
	node, err := c.s.streamNode(key, r)
	if err != nil {
		c.s.log.Warn("xds stream refused", "err", err)
		if _, ok := status.FromError(err); ok {
			return nil, err // already carries its code
		}
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	nack, matched := c.s.acks.answered(key, node, r.typeURL, r.nonce, r.errDetail)
	switch {
	case nack != nil:
		c.s.metrics.count(c.s.metrics.nacks, r.typeURL)
		c.s.log.Warn("xds NACK", "node", node, "type_url", r.typeURL, "version", nack.Version, "err", nack.Detail)
	case matched:
		c.s.metrics.count(c.s.metrics.acks, r.typeURL)
	}
	return nack, nil
}

func (c callbacks) response(key streamKey, typeURL, nonce, version string, n int) {
	c.s.mu.Lock()
	node := c.s.streams[key]
	c.s.mu.Unlock()
	c.s.acks.sent(key, node, typeURL, nonce, version, n)
	c.s.metrics.count(c.s.metrics.pushes, typeURL)
}
