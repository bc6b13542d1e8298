package agent

import (
	"encoding/json"
	"fmt"
	"net/http"

	"github.com/nodemesh/nodemesh/nodeagent"
	"github.com/nodemesh/nodemesh/nodeagent/ads"
	"github.com/nodemesh/nodemesh/nodeagent/envoy"
)

// Status is what the agent's /status endpoint serves.
type Status struct {
	Node string `json:"node"`
	// ADS is the dataplane stream: per type URL the ACKed version, ACK
	// and NACK counts, the last NACK.
	ADS   ads.Status  `json:"ads"`
	Apply ApplyStatus `json:"apply"`
	// Counters are the kernel's; CountersError says why they are missing.
	Counters      *Counters    `json:"counters,omitempty"`
	CountersError string       `json:"countersError,omitempty"`
	Envoy         *EnvoyStatus `json:"envoy,omitempty"`
	// WorkloadSVIDs: the trust bundle and, per local service account,
	// the SVID's serial and validity, renewals and the last error.
	WorkloadSVIDs *WorkloadSVIDStatus `json:"workloadSVIDs,omitempty"`
}

// Counters are nodeagent.Counters with services keyed by "vip:port/PROTO".
type Counters struct {
	Services map[string]nodeagent.ServiceCounters `json:"services"`
	Connect  nodeagent.VerdictCounters            `json:"connect"`
	Sendmsg  nodeagent.VerdictCounters            `json:"sendmsg"`
	Ingress  nodeagent.VerdictCounters            `json:"ingress"`
}

// EnvoyStatus is the Envoy side of the node.
type EnvoyStatus struct {
	Socket    string                  `json:"socket"`
	Bootstrap string                  `json:"bootstrap"`
	Streams   envoy.ProxyStats        `json:"streams"`            // Envoy xDS streams forwarded
	LocalSDS  bool                    `json:"localSDS,omitempty"` // secrets served by the agent
	Process   *envoy.SupervisorStatus `json:"process,omitempty"`
	Absent    string                  `json:"absent,omitempty"` // why no Envoy is started
}

// Status returns the agent's state. Safe for concurrent use while Run
// runs.
func (a *Agent) Status() Status {
	st := Status{Node: a.cfg.Node, ADS: a.client.Status(), Apply: a.applier.Status()}
	if c, err := a.dp.Counters(); err != nil {
		st.CountersError = err.Error()
	} else {
		st.Counters = &Counters{Services: make(map[string]nodeagent.ServiceCounters, len(c.Services)),
			Connect: c.Connect, Sendmsg: c.Sendmsg, Ingress: c.Ingress}
		for k, v := range c.Services {
			st.Counters.Services[k.String()] = v
		}
	}
	if a.svids != nil {
		ws := a.svids.Status()
		st.WorkloadSVIDs = &ws
	}
	if a.proxy != nil {
		es := &EnvoyStatus{Socket: a.cfg.EnvoySocket, Bootstrap: a.cfg.EnvoyBootstrapPath, Streams: a.proxy.Stats(), LocalSDS: a.cfg.LocalSDS}
		if a.sup != nil {
			ps := a.sup.Status()
			es.Process = &ps
		} else {
			es.Absent = fmt.Sprintf("%s not found on PATH", a.cfg.EnvoyBinary)
		}
		st.Envoy = es
	}
	return st
}

// Handler serves /status, /debug/ads, /debug/dataplane, /healthz and
// /readyz.
func (a *Agent) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, a.Status()) })
	mux.Handle("GET /debug/ads", a.client.StatusHandler())
	mux.HandleFunc("GET /debug/dataplane", func(w http.ResponseWriter, _ *http.Request) {
		st, err := a.dp.Dump()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		writeJSON(w, st)
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := a.Ready(); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	return mux
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
