package translate

import (
	"maps"
	"math"
	"slices"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	faultcommonv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/common/fault/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	networking "istio.io/api/networking/v1alpha3"

	"github.com/nodemesh/nodemesh/config"
)

// Per-route policies of a VirtualService HTTP route: retries, fault
// injection and header manipulation. Envoy and gRPC both apply retries and
// faults (gRPC ignores header manipulation).

// faultFilterName is Envoy's fault filter; every HTTP connection manager
// has it before the router, and routes configure it.
const faultFilterName = "envoy.filters.http.fault"

type retryPolicy struct {
	Attempts      uint32
	PerTryTimeout time.Duration
	RetryOn       string
}

type faultPolicy struct {
	Delay        time.Duration
	DelayPercent float64 // 0..100
	HasAbort     bool
	AbortHTTP    uint32 // HTTP status, or 0 with AbortGRPC set
	AbortGRPC    uint32
	AbortPercent float64
}

type headerOps struct {
	Set, Add [][2]string // sorted by name
	Remove   []string
}

// defaultRetryOn is Istio's retry condition when a route has retries but no
// retryOn.
const defaultRetryOn = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"

func (s *scope) routePolicies(o *config.Object, field string, hr *networking.HTTPRoute, r *httpRoute) {
	if rt := hr.GetRetries(); rt != nil && rt.GetAttempts() > 0 {
		r.Retry = &retryPolicy{Attempts: uint32(rt.GetAttempts()), RetryOn: rt.GetRetryOn()}
		if r.Retry.RetryOn == "" {
			r.Retry.RetryOn = defaultRetryOn
		}
		if d := rt.GetPerTryTimeout(); d != nil && d.CheckValid() == nil && d.AsDuration() > 0 {
			r.Retry.PerTryTimeout = d.AsDuration()
		}
	}
	if f := hr.GetFault(); f != nil {
		r.Fault = s.fault(o, field+".fault", f)
	}
	if h := hr.GetHeaders(); h != nil {
		r.Request = headerOperations(h.GetRequest())
		r.Response = headerOperations(h.GetResponse())
	}
}

func (s *scope) fault(o *config.Object, field string, f *networking.HTTPFaultInjection) *faultPolicy {
	fp := &faultPolicy{}
	if d := f.GetDelay(); d != nil {
		if fd := d.GetFixedDelay(); fd != nil && fd.CheckValid() == nil && fd.AsDuration() > 0 {
			fp.Delay = fd.AsDuration()
			fp.DelayPercent = percent(d.GetPercentage(), d.GetPercent())
		} else {
			s.diags.Warnf(o, field+".delay", "only a positive fixedDelay is supported; delay ignored")
		}
	}
	if a := f.GetAbort(); a != nil {
		switch {
		case a.GetHttpStatus() >= 200 && a.GetHttpStatus() < 600:
			fp.HasAbort, fp.AbortHTTP = true, uint32(a.GetHttpStatus())
		case a.GetGrpcStatus() != "":
			code, ok := grpcCodes[strings.ToUpper(a.GetGrpcStatus())]
			if !ok {
				s.diags.Errorf(o, field+".abort.grpcStatus", "unknown gRPC status %q; abort ignored", a.GetGrpcStatus())
				break
			}
			fp.HasAbort, fp.AbortGRPC = true, code
		default:
			s.diags.Warnf(o, field+".abort", "only httpStatus (200..599) and grpcStatus aborts are supported; abort ignored")
		}
		if fp.HasAbort {
			fp.AbortPercent = percent(a.GetPercentage(), 0)
		}
	}
	if fp.Delay == 0 && !fp.HasAbort {
		return nil
	}
	return fp
}

// percent reads an Istio percentage (unset means 100%).
func percent(p *networking.Percent, legacy int32) float64 {
	switch {
	case p != nil:
		return math.Max(0, math.Min(100, p.GetValue()))
	case legacy > 0:
		return math.Min(100, float64(legacy))
	default:
		return 100
	}
}

var grpcCodes = map[string]uint32{
	"OK": 0, "CANCELLED": 1, "UNKNOWN": 2, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4, "NOT_FOUND": 5,
	"ALREADY_EXISTS": 6, "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8, "FAILED_PRECONDITION": 9,
	"ABORTED": 10, "OUT_OF_RANGE": 11, "UNIMPLEMENTED": 12, "INTERNAL": 13, "UNAVAILABLE": 14,
	"DATA_LOSS": 15, "UNAUTHENTICATED": 16,
}

func headerOperations(h *networking.Headers_HeaderOperations) headerOps {
	var ops headerOps
	for _, k := range slices.Sorted(maps.Keys(h.GetSet())) {
		ops.Set = append(ops.Set, [2]string{strings.ToLower(k), h.GetSet()[k]})
	}
	for _, k := range slices.Sorted(maps.Keys(h.GetAdd())) {
		ops.Add = append(ops.Add, [2]string{strings.ToLower(k), h.GetAdd()[k]})
	}
	ops.Remove = slices.Sorted(slices.Values(h.GetRemove()))
	return ops
}

// applyRoutePolicies sets retries, fault and headers on an Envoy route.
func applyRoutePolicies(er *routev3.Route, r httpRoute) {
	if rp := r.Retry; rp != nil {
		p := &routev3.RetryPolicy{RetryOn: rp.RetryOn, NumRetries: wrapperspb.UInt32(rp.Attempts)}
		if rp.PerTryTimeout > 0 {
			p.PerTryTimeout = durationpb.New(rp.PerTryTimeout)
		}
		er.GetRoute().RetryPolicy = p
	}
	if f := r.Fault; f != nil {
		hf := &faultv3.HTTPFault{}
		if f.Delay > 0 {
			hf.Delay = &faultcommonv3.FaultDelay{
				FaultDelaySecifier: &faultcommonv3.FaultDelay_FixedDelay{FixedDelay: durationpb.New(f.Delay)},
				Percentage:         fraction(f.DelayPercent),
			}
		}
		if f.HasAbort {
			hf.Abort = &faultv3.FaultAbort{Percentage: fraction(f.AbortPercent)}
			if f.AbortHTTP != 0 {
				hf.Abort.ErrorType = &faultv3.FaultAbort_HttpStatus{HttpStatus: f.AbortHTTP}
			} else {
				hf.Abort.ErrorType = &faultv3.FaultAbort_GrpcStatus{GrpcStatus: f.AbortGRPC}
			}
		}
		er.TypedPerFilterConfig = map[string]*anypb.Any{faultFilterName: mustAny(hf)}
	}
	er.RequestHeadersToAdd = headerOptions(r.Request)
	er.RequestHeadersToRemove = r.Request.Remove
	er.ResponseHeadersToAdd = headerOptions(r.Response)
	er.ResponseHeadersToRemove = r.Response.Remove
}

func fraction(pct float64) *typev3.FractionalPercent {
	return &typev3.FractionalPercent{Numerator: uint32(math.Round(pct * 10000)), Denominator: typev3.FractionalPercent_MILLION}
}

func headerOptions(ops headerOps) []*corev3.HeaderValueOption {
	var out []*corev3.HeaderValueOption
	for _, kv := range ops.Set {
		out = append(out, &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: kv[0], Value: kv[1]},
			AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD})
	}
	for _, kv := range ops.Add {
		out = append(out, &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: kv[0], Value: kv[1]},
			AppendAction: corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD})
	}
	return out
}
