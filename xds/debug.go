package xds

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"text/tabwriter"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/nodemesh/nodemesh/translate"
)

// DebugHandler serves /debug/syncz, /debug/config_dump, /debug/diagnostics
// and /metrics. The control plane adds /healthz and /readyz.
func (s *Server) DebugHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /debug/syncz", s.serveSyncz)
	mux.HandleFunc("GET /debug/config_dump", s.serveConfigDump)
	mux.HandleFunc("GET /debug/diagnostics", s.serveDiagnostics)
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		s.metrics.write(w)
	})
	return mux
}

// wantsJSON: ?format=json or an Accept header naming JSON.
func wantsJSON(r *http.Request) bool {
	if f := r.URL.Query().Get("format"); f != "" {
		return f == "json"
	}
	return strings.Contains(r.Header.Get("Accept"), "application/json")
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// serveSyncz writes sync status, as a table like istioctl proxy-status or
// as JSON.
func (s *Server) serveSyncz(w http.ResponseWriter, r *http.Request) {
	st := s.Status()
	if wantsJSON(r) {
		writeJSON(w, st)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	WriteSyncTable(w, st)
}

// WriteSyncTable writes one row per node: kind, namespace, and per type
// its state with the sent and ACKed versions; NACK details follow. Only
// types some node has are shown.
func WriteSyncTable(w io.Writer, st []NodeStatus) {
	present := map[string]bool{}
	for _, n := range st {
		for _, t := range n.Types {
			present[t.TypeURL] = true
		}
	}
	var cols []string
	for _, t := range TypeURLs {
		if present[t] {
			cols = append(cols, t)
		}
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprint(tw, "NODE\tKIND\tNAMESPACE\tGEN")
	for _, t := range cols {
		fmt.Fprintf(tw, "\t%s", typeShort(t))
	}
	fmt.Fprint(tw, "\tERROR\n")
	var nacks []string
	for _, n := range st {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d", n.ID, n.Kind, dash(n.Namespace), n.Generation)
		byType := map[string]TypeStatus{}
		for _, t := range n.Types {
			byType[t.TypeURL] = t
		}
		for _, col := range cols {
			t, ok := byType[col]
			if !ok {
				fmt.Fprint(tw, "\t-")
				continue
			}
			fmt.Fprintf(tw, "\t%s (sent %s, acked %s)", t.State, dash(t.Sent), dash(t.Acked))
			if t.NACK != nil {
				nacks = append(nacks, fmt.Sprintf("%s %s: %v", n.ID, t.Type, t.NACK))
			}
		}
		fmt.Fprintf(tw, "\t%s\n", dash(n.Error))
	}
	_ = tw.Flush()
	for _, n := range nacks {
		fmt.Fprintf(w, "NACK %s\n", n)
	}
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// serveConfigDump writes the configuration a node is served, as JSON.
func (s *Server) serveConfigDump(w http.ResponseWriter, r *http.Request) {
	id := r.URL.Query().Get("node")
	if id == "" {
		http.Error(w, "config_dump needs ?node=ID; connected nodes are listed at /debug/syncz", http.StatusBadRequest)
		return
	}
	nc, extra, versions, ok := s.served(id)
	if !ok {
		http.Error(w, fmt.Sprintf("node %q is not connected or has no config yet", id), http.StatusNotFound)
		return
	}
	dump, err := DumpNodeConfig(nc)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	out := map[string]any{"node": id, "versions": versions, "config": dump}
	if len(extra) > 0 {
		dp := map[string][]json.RawMessage{}
		for _, e := range extra {
			dp[typeShort(e.TypeURL)] = []json.RawMessage{}
			for _, item := range e.Items {
				b, err := protojson.Marshal(redactSecret(item))
				if err != nil {
					http.Error(w, err.Error(), http.StatusInternalServerError)
					return
				}
				dp[typeShort(e.TypeURL)] = append(dp[typeShort(e.TypeURL)], b)
			}
		}
		out["dataplane"] = dp
	}
	writeJSON(w, out)
}

// DumpNodeConfig renders a NodeConfig as protojson objects, by type.
func DumpNodeConfig(nc *translate.NodeConfig) (map[string][]json.RawMessage, error) {
	out := map[string][]json.RawMessage{}
	opts := protojson.MarshalOptions{}
	add := func(key string, m proto.Message) error {
		b, err := opts.Marshal(m)
		if err != nil {
			return fmt.Errorf("dump %s: %w", key, err)
		}
		out[key] = append(out[key], b)
		return nil
	}
	for _, group := range []struct {
		key string
		n   int
		at  func(int) proto.Message
	}{
		{"listeners", len(nc.Listeners), func(i int) proto.Message { return nc.Listeners[i] }},
		{"routes", len(nc.Routes), func(i int) proto.Message { return nc.Routes[i] }},
		{"clusters", len(nc.Clusters), func(i int) proto.Message { return nc.Clusters[i] }},
		{"endpoints", len(nc.Endpoints), func(i int) proto.Message { return nc.Endpoints[i] }},
	} {
		out[group.key] = []json.RawMessage{}
		for i := range group.n {
			if err := add(group.key, group.at(i)); err != nil {
				return nil, err
			}
		}
	}
	return out, nil
}

type diagnosticJSON struct {
	Severity string `json:"severity"`
	Origin   string `json:"origin,omitempty"`
	Object   string `json:"object,omitempty"`
	Field    string `json:"field,omitempty"`
	Message  string `json:"message"`
}

func (s *Server) serveDiagnostics(w http.ResponseWriter, r *http.Request) {
	ds := s.Diagnostics()
	if wantsJSON(r) {
		out := make([]diagnosticJSON, 0, len(ds))
		for _, d := range ds {
			j := diagnosticJSON{Severity: d.Severity.String(), Origin: d.Origin.String(), Field: d.Field, Message: d.Message}
			if d.Object.Kind != "" || d.Object.Name != "" {
				j.Object = d.Object.String()
			}
			out = append(out, j)
		}
		writeJSON(w, out)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	for _, d := range ds {
		fmt.Fprintln(w, d.String())
	}
}
