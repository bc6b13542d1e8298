package secure

import (
	"slices"
	"strconv"

	securityv1beta1 "istio.io/api/security/v1beta1"

	"github.com/nodemesh/nodemesh/config"
)

// Mode is the effective mutual TLS mode of a workload port.
type Mode int

const (
	// Permissive accepts mTLS and plaintext on the same port (Istio's default).
	Permissive Mode = iota
	// Strict accepts only mTLS.
	Strict
	// Disable accepts only plaintext.
	Disable
)

func (m Mode) String() string {
	switch m {
	case Strict:
		return "STRICT"
	case Disable:
		return "DISABLE"
	default:
		return "PERMISSIVE"
	}
}

// podMode is the resolved PeerAuthentication of one pod: a default and
// per-port overrides (workload ports, not service ports).
type podMode struct {
	def   Mode
	ports map[uint32]Mode
}

func (p podMode) at(port uint32) Mode {
	if m, ok := p.ports[port]; ok {
		return m
	}
	return p.def
}

// peerAuth resolves PeerAuthentication with Istio's precedence.
type peerAuth struct {
	snap  *config.Snapshot
	root  string
	diags *[]config.Diagnostic
	cache map[string]podMode // namespace/name of pod -> mode
	warn  map[config.Key]bool
}

func newPeerAuth(snap *config.Snapshot, root string, diags *[]config.Diagnostic) *peerAuth {
	return &peerAuth{snap: snap, root: root, diags: diags, cache: map[string]podMode{}, warn: map[config.Key]bool{}}
}

func (a *peerAuth) warnOnce(o *config.Object, field, msg string) {
	if a.warn[o.Key] {
		return
	}
	a.warn[o.Key] = true
	*a.diags = append(*a.diags, config.Diagnostic{Severity: config.SeverityWarning, Origin: o.Origin, Object: o.Key, Field: field, Message: msg})
}

// policies returns the PeerAuthentications of a namespace, by name.
func (a *peerAuth) policies(ns string) []*config.Object {
	objs := slices.Clone(a.snap.ListInNamespace(config.KindPeerAuthentication, ns))
	slices.SortFunc(objs, func(x, y *config.Object) int {
		if x.Name < y.Name {
			return -1
		}
		if x.Name > y.Name {
			return 1
		}
		return 0
	})
	return objs
}

func spec(o *config.Object) *securityv1beta1.PeerAuthentication {
	pa, _ := o.Spec.(*securityv1beta1.PeerAuthentication)
	return pa
}

// levelPolicy picks the namespace-wide policy (no selector) of ns; when
// there are several, the first by name wins (Istio: the oldest) and the
// others are reported.
func (a *peerAuth) levelPolicy(ns string) *config.Object {
	var chosen *config.Object
	for _, o := range a.policies(ns) {
		pa := spec(o)
		if pa == nil || len(pa.GetSelector().GetMatchLabels()) > 0 {
			continue
		}
		if chosen != nil {
			a.warnOnce(o, "", "another namespace-wide PeerAuthentication "+chosen.Name+" takes precedence; ignored")
			continue
		}
		chosen = o
		if len(pa.GetPortLevelMtls()) > 0 {
			a.warnOnce(o, "spec.portLevelMtls", "portLevelMtls applies only to policies with a workload selector; ignored")
		}
	}
	return chosen
}

// workloadPolicy picks the first (by name) policy of the pod's namespace
// whose selector matches the pod's labels.
func (a *peerAuth) workloadPolicy(pod *config.Object) *config.Object {
	var chosen *config.Object
	for _, o := range a.policies(pod.Namespace) {
		sel := spec(o).GetSelector().GetMatchLabels()
		if len(sel) == 0 || !labelsMatch(sel, pod.Labels) {
			continue
		}
		if chosen != nil {
			a.warnOnce(o, "spec.selector", "PeerAuthentication "+chosen.Name+" also selects pod "+pod.Name+" and takes precedence; ignored for it")
			continue
		}
		chosen = o
	}
	return chosen
}

func labelsMatch(sel, labels map[string]string) bool {
	for k, v := range sel {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

func modeOf(m *securityv1beta1.PeerAuthentication_MutualTLS) (Mode, bool) {
	switch m.GetMode() {
	case securityv1beta1.PeerAuthentication_MutualTLS_STRICT:
		return Strict, true
	case securityv1beta1.PeerAuthentication_MutualTLS_PERMISSIVE:
		return Permissive, true
	case securityv1beta1.PeerAuthentication_MutualTLS_DISABLE:
		return Disable, true
	}
	return Permissive, false // UNSET or absent: inherit
}

// forPod resolves the mode of a pod: mesh (root namespace) < namespace <
// workload, UNSET inheriting from the level above; port-level settings of
// the workload policy override per port (UNSET there inherits the
// workload's own mode).
func (a *peerAuth) forPod(pod *config.Object) podMode {
	key := pod.Namespace + "/" + pod.Name
	if m, ok := a.cache[key]; ok {
		return m
	}
	mode := Permissive
	if o := a.levelPolicy(a.root); o != nil {
		if m, ok := modeOf(spec(o).GetMtls()); ok {
			mode = m
		}
	}
	if pod.Namespace != a.root {
		if o := a.levelPolicy(pod.Namespace); o != nil {
			if m, ok := modeOf(spec(o).GetMtls()); ok {
				mode = m
			}
		}
	}
	pm := podMode{def: mode}
	if o := a.workloadPolicy(pod); o != nil {
		pa := spec(o)
		if m, ok := modeOf(pa.GetMtls()); ok {
			pm.def = m
		}
		for port, mt := range pa.GetPortLevelMtls() {
			if port == 0 || port > 65535 {
				a.warnOnce(o, "spec.portLevelMtls["+strconv.FormatUint(uint64(port), 10)+"]", "port out of range; ignored")
				continue
			}
			if pm.ports == nil {
				pm.ports = map[uint32]Mode{}
			}
			if m, ok := modeOf(mt); ok {
				pm.ports[port] = m
			} else {
				pm.ports[port] = pm.def
			}
		}
	}
	a.cache[key] = pm
	return pm
}
