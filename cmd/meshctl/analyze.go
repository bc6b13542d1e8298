package main

import (
	"cmp"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/nodemesh/nodemesh/config"
	"github.com/nodemesh/nodemesh/translate"
	"github.com/nodemesh/nodemesh/translate/dataplane"
)

// runAnalyze loads DIRs, translates for every node that has pods and for a
// proxyless gRPC client in every namespace, and prints every diagnostic.
// It exits 1 if any is an error.
func runAnalyze(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("analyze", flag.ContinueOnError)
	fs.SetOutput(stderr)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() == 0 {
		fmt.Fprint(stderr, "usage: meshctl analyze DIR...\n")
		return 2
	}
	diags := analyze(fs.Args()...)
	if len(diags) == 0 {
		fmt.Fprintf(stdout, "No validation issues found when analyzing %s.\n", strings.Join(fs.Args(), " "))
		return 0
	}
	for _, d := range diags {
		fmt.Fprintln(stdout, d.String())
	}
	if config.HasErrors(diags) {
		return 1
	}
	return 0
}

// analyze returns the loader's and translator's diagnostics, without
// duplicates, errors first, then by file and line.
func analyze(paths ...string) []config.Diagnostic {
	objs, diags := config.Load(paths...)
	store := config.NewStore()
	if err := store.Replace("meshctl", objs); err != nil {
		return append(diags, config.Diagnostic{Severity: config.SeverityError, Message: fmt.Sprintf("store: %v", err)})
	}
	snap := store.Snapshot()
	mesh := translate.Prepare(snap)
	dp := dataplane.Prepare(snap, dataplane.Options{})
	for _, p := range proxiesOf(snap) {
		nc := mesh.Translate(p)
		diags = append(diags, nc.Diagnostics...)
		if p.Kind == translate.SharedEnvoy {
			diags = append(diags, dp.Translate(p.Node).Diagnostics...)
		}
		if err := translate.Check(nc); err != nil {
			diags = append(diags, config.Diagnostic{
				Severity: config.SeverityError,
				Message:  fmt.Sprintf("generated config for %s fails its check (a nodemesh bug): %v", proxyString(p), err),
			})
		}
	}
	return sortDiagnostics(dedupe(diags))
}

// proxiesOf lists a shared Envoy for every node with pods and a proxyless
// gRPC client for every namespace with pods or services.
func proxiesOf(snap *config.Snapshot) []translate.Proxy {
	nodes, namespaces := map[string]bool{}, map[string]bool{}
	for _, o := range snap.List(config.KindPod) {
		if pod, ok := o.Spec.(*corev1.Pod); ok && pod.Spec.NodeName != "" {
			nodes[pod.Spec.NodeName] = true
		}
		namespaces[o.Namespace] = true
	}
	for _, o := range snap.List(config.KindService) {
		namespaces[o.Namespace] = true
	}
	var out []translate.Proxy
	for _, n := range sortedKeys(nodes) {
		out = append(out, translate.Proxy{Kind: translate.SharedEnvoy, Node: n})
	}
	for _, ns := range sortedKeys(namespaces) {
		out = append(out, translate.Proxy{Kind: translate.ProxylessGRPC, Namespace: ns})
	}
	return out
}

func proxyString(p translate.Proxy) string {
	if p.Kind == translate.ProxylessGRPC {
		return "proxyless gRPC in namespace " + p.Namespace
	}
	return "node " + p.Node
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func dedupe(ds []config.Diagnostic) []config.Diagnostic {
	seen := map[string]bool{}
	out := ds[:0:0]
	for _, d := range ds {
		if k := d.String(); !seen[k] {
			seen[k] = true
			out = append(out, d)
		}
	}
	return out
}

func sortDiagnostics(ds []config.Diagnostic) []config.Diagnostic {
	slices.SortStableFunc(ds, func(a, b config.Diagnostic) int {
		return cmp.Or(
			cmp.Compare(b.Severity, a.Severity),
			cmp.Compare(a.Origin.File, b.Origin.File),
			cmp.Compare(a.Origin.Line, b.Origin.Line),
			cmp.Compare(a.Object.String(), b.Object.String()),
			cmp.Compare(a.Field, b.Field),
		)
	})
	return ds
}
