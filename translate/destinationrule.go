package translate

import (
	"strings"
	"time"

	networking "istio.io/api/networking/v1alpha3"

	"github.com/nodemesh/nodemesh/config"
)

func (m *mesh) readDestinationRules() {
	for _, o := range m.src.List(config.KindDestinationRule) {
		dr, ok := o.Spec.(*networking.DestinationRule)
		if !ok || dr == nil {
			m.diags.Errorf(o, "spec", "unexpected spec type %T", o.Spec)
			continue
		}
		if dr.GetWorkloadSelector() != nil {
			m.diags.Warnf(o, "spec.workloadSelector", "DestinationRules with a workload selector are not supported; ignored")
			continue
		}
		if dr.GetHost() == "" {
			m.diags.Errorf(o, "spec.host", "host is empty; ignored")
			continue
		}
		r := &destinationRule{
			obj:    o,
			Host:   resolveHost(dr.GetHost(), o.Namespace),
			Policy: m.trafficPolicy(o, "spec.trafficPolicy", dr.GetTrafficPolicy()),
		}
		seen := map[string]bool{}
		for i, s := range dr.GetSubsets() {
			field := fieldf("spec.subsets[%d]", i)
			if s.GetName() == "" || seen[s.GetName()] {
				m.diags.Errorf(o, field+".name", "subset name %q is empty or repeated; skipped", s.GetName())
				continue
			}
			seen[s.GetName()] = true
			r.Subsets = append(r.Subsets, subset{
				Name:   s.GetName(),
				Labels: s.GetLabels(),
				Policy: m.trafficPolicy(o, field+".trafficPolicy", s.GetTrafficPolicy()).merge(r.Policy),
			})
		}
		r.export = parseExportTo(dr.GetExportTo(), o.Namespace)
		if !strings.HasPrefix(r.Host, "*") && len(m.byHost[r.Host]) == 0 {
			m.diags.Warnf(o, "spec.host", "host %s is not a known service or ServiceEntry host; the rule applies to nothing", r.Host)
		}
		if strings.HasPrefix(r.Host, "*") {
			m.drWildcard = append(m.drWildcard, r)
		} else {
			m.drByHost[r.Host] = append(m.drByHost[r.Host], r)
		}
	}
}

// destinationRuleFor picks the DestinationRule a client namespace uses for
// host, as Istio does: one in the client's namespace first, then one in the
// host's namespace, then any other exported to the client (by namespace and
// name). Exact hosts beat wildcards.
func (m *mesh) destinationRuleFor(host, hostNS, clientNS string) *destinationRule {
	var best *destinationRule
	bestRank := 1 << 30
	consider := func(r *destinationRule, wildcard bool) {
		if r.obj.Namespace != clientNS && !r.export.visibleTo(clientNS) {
			return
		}
		rank := 2
		switch r.obj.Namespace {
		case clientNS:
			rank = 0
		case hostNS:
			rank = 1
		}
		if wildcard {
			rank += 3
		}
		if rank < bestRank {
			best, bestRank = r, rank
		}
	}
	for _, r := range m.drByHost[host] {
		consider(r, false)
	}
	for _, r := range m.drWildcard {
		if hostMatches(r.Host, host) {
			consider(r, true)
		}
	}
	return best
}

// trafficPolicy reads the supported parts of an Istio TrafficPolicy and
// reports the rest once as informational.
func (m *mesh) trafficPolicy(o *config.Object, field string, tp *networking.TrafficPolicy) trafficPolicy {
	var p trafficPolicy
	if tp == nil {
		return p
	}
	switch tp.GetLoadBalancer().GetSimple() {
	case networking.LoadBalancerSettings_ROUND_ROBIN:
		p.LB = lbRoundRobin
	case networking.LoadBalancerSettings_LEAST_CONN, networking.LoadBalancerSettings_LEAST_REQUEST:
		p.LB = lbLeastRequest
	case networking.LoadBalancerSettings_RANDOM:
		p.LB = lbRandom
	case networking.LoadBalancerSettings_PASSTHROUGH:
		m.diags.Warnf(o, field+".loadBalancer.simple", "PASSTHROUGH is not supported; using round robin")
	}
	if ch := tp.GetLoadBalancer().GetConsistentHash(); ch != nil {
		p.Hash = m.consistentHash(o, field+".loadBalancer.consistentHash", ch)
	}
	if tcp := tp.GetConnectionPool().GetTcp(); tcp != nil {
		p.MaxConnections = positive(tcp.GetMaxConnections())
		if d := tcp.GetConnectTimeout(); d != nil && d.AsDuration() > 0 {
			p.ConnectTimeout = d.AsDuration().Truncate(time.Millisecond)
		}
	}
	if h := tp.GetConnectionPool().GetHttp(); h != nil {
		p.MaxPendingRequests = positive(h.GetHttp1MaxPendingRequests())
		p.MaxRequests = positive(h.GetHttp2MaxRequests())
		p.MaxRetries = positive(h.GetMaxRetries())
		p.MaxRequestsPerConnect = positive(h.GetMaxRequestsPerConnection())
	}
	if tp.GetTls() != nil {
		m.diags.Infof(o, field+".tls", "client TLS settings are managed by the mesh's own mTLS; ignored")
	}
	if od := tp.GetOutlierDetection(); od != nil {
		p.Outlier = m.outlierDetection(o, field+".outlierDetection", od)
	}
	if len(tp.GetPortLevelSettings()) > 0 {
		m.diags.Infof(o, field+".portLevelSettings", "port level settings are not supported yet; ignored")
	}
	return p
}

func positive(v int32) uint32 {
	if v <= 0 {
		return 0
	}
	return uint32(v)
}

func (m *mesh) outlierDetection(o *config.Object, field string, od *networking.OutlierDetection) *outlierDetection {
	out := &outlierDetection{MaxEjectionPercent: positive(od.GetMaxEjectionPercent())}
	if v := od.GetConsecutive_5XxErrors(); v != nil {
		n := v.GetValue()
		out.Consecutive5xx = &n
	} else if od.GetConsecutiveErrors() > 0 {
		n := uint32(od.GetConsecutiveErrors())
		out.Consecutive5xx = &n
	}
	if v := od.GetConsecutiveGatewayErrors(); v != nil {
		n := v.GetValue()
		out.ConsecutiveGateway = &n
	}
	if d := od.GetInterval(); d != nil && d.CheckValid() == nil && d.AsDuration() > 0 {
		out.Interval = d.AsDuration()
	}
	if d := od.GetBaseEjectionTime(); d != nil && d.CheckValid() == nil && d.AsDuration() > 0 {
		out.BaseEjectionTime = d.AsDuration()
	}
	if out.MaxEjectionPercent > 100 {
		m.diags.Errorf(o, field+".maxEjectionPercent", "%d is more than 100; using 100", out.MaxEjectionPercent)
		out.MaxEjectionPercent = 100
	}
	if od.GetMinHealthPercent() != 0 || od.GetSplitExternalLocalOriginErrors() || len(od.GetOutlierDetectionHttpErrorCodes()) > 0 {
		m.diags.Infof(o, field, "minHealthPercent, splitExternalLocalOriginErrors and outlierDetectionHttpErrorCodes are not supported yet; ignored")
	}
	return out
}
