package xds

import (
	"fmt"
	"io"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// metrics are the server's counters, exposed in the Prometheus text format
// by writeMetrics. Written by hand: a handful of series needs no client
// library.
type metrics struct {
	streams      atomic.Int64 // open ADS streams (SotW + Delta)
	nodes        atomic.Int64 // connected nodes
	rebuilds     atomic.Uint64
	skipped      atomic.Uint64 // node snapshots left alone: nothing changed
	checkErrors  atomic.Uint64 // snapshots refused by the check
	translateSum atomic.Int64  // nanoseconds

	mu     sync.Mutex
	pushes map[string]uint64 // type URL -> responses sent
	nacks  map[string]uint64 // type URL -> NACKs received
	acks   map[string]uint64

	translateBuckets [len(translateBounds) + 1]atomic.Uint64
}

// translateBounds are the histogram bucket bounds of translate durations, in seconds.
var translateBounds = [...]float64{0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1}

func newMetrics() *metrics {
	return &metrics{pushes: map[string]uint64{}, nacks: map[string]uint64{}, acks: map[string]uint64{}}
}

func (m *metrics) observeTranslate(d time.Duration) {
	m.translateSum.Add(int64(d))
	s := d.Seconds()
	i := sort.SearchFloat64s(translateBounds[:], s)
	m.translateBuckets[i].Add(1)
}

func (m *metrics) count(which map[string]uint64, typeURL string) {
	m.mu.Lock()
	which[typeURL]++
	m.mu.Unlock()
}

func (m *metrics) write(w io.Writer) {
	p := func(format string, args ...any) { fmt.Fprintf(w, format, args...) }
	p("# HELP nodemesh_xds_streams Open ADS streams (SotW and Delta).\n# TYPE nodemesh_xds_streams gauge\n")
	p("nodemesh_xds_streams %d\n", m.streams.Load())
	p("# HELP nodemesh_xds_nodes Nodes with at least one open stream.\n# TYPE nodemesh_xds_nodes gauge\n")
	p("nodemesh_xds_nodes %d\n", m.nodes.Load())
	m.mu.Lock()
	for _, c := range []struct {
		name, help string
		vals       map[string]uint64
	}{
		{"nodemesh_xds_pushes_total", "xDS responses sent, by type.", m.pushes},
		{"nodemesh_xds_acks_total", "ACKs received, by type.", m.acks},
		{"nodemesh_xds_nacks_total", "NACKs received, by type.", m.nacks},
	} {
		p("# HELP %s %s\n# TYPE %s counter\n", c.name, c.help, c.name)
		for _, t := range TypeURLs {
			p("%s{type=%q} %d\n", c.name, typeShort(t), c.vals[t])
		}
	}
	m.mu.Unlock()
	p("# HELP nodemesh_xds_snapshot_rebuilds_total Node snapshots set in the cache.\n# TYPE nodemesh_xds_snapshot_rebuilds_total counter\n")
	p("nodemesh_xds_snapshot_rebuilds_total %d\n", m.rebuilds.Load())
	p("# HELP nodemesh_xds_snapshot_unchanged_total Node snapshots not pushed because no version changed.\n# TYPE nodemesh_xds_snapshot_unchanged_total counter\n")
	p("nodemesh_xds_snapshot_unchanged_total %d\n", m.skipped.Load())
	p("# HELP nodemesh_xds_snapshot_check_errors_total Node snapshots refused by the consistency check (previous kept).\n# TYPE nodemesh_xds_snapshot_check_errors_total counter\n")
	p("nodemesh_xds_snapshot_check_errors_total %d\n", m.checkErrors.Load())
	p("# HELP nodemesh_xds_translate_seconds Time to translate the config for one proxy.\n# TYPE nodemesh_xds_translate_seconds histogram\n")
	var cum uint64
	for i, b := range translateBounds {
		cum += m.translateBuckets[i].Load()
		p("nodemesh_xds_translate_seconds_bucket{le=\"%g\"} %d\n", b, cum)
	}
	cum += m.translateBuckets[len(translateBounds)].Load()
	p("nodemesh_xds_translate_seconds_bucket{le=\"+Inf\"} %d\n", cum)
	p("nodemesh_xds_translate_seconds_sum %g\n", time.Duration(m.translateSum.Load()).Seconds())
	p("nodemesh_xds_translate_seconds_count %d\n", cum)
}
