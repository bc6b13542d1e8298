package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"

	"github.com/nodemesh/nodemesh/config"
	"github.com/nodemesh/nodemesh/translate"
	"github.com/nodemesh/nodemesh/translate/dataplane"
	"github.com/nodemesh/nodemesh/xds"
)

// runTranslate prints the xDS resources a node's shared Envoy (or, with
// --grpc-namespace, a proxyless gRPC client in that namespace) would get,
// as YAML. It refuses configuration with load errors, as meshd does.
func runTranslate(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("translate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	node := fs.String("node", "", "Kubernetes node name (the shared Envoy's xDS node id)")
	grpcNS := fs.String("grpc-namespace", "", "translate for a proxyless gRPC client in this namespace instead")
	// Accept flags after the directory too: meshctl translate DIR --node N.
	var dirs []string
	for rest := args; ; {
		if err := fs.Parse(rest); err != nil {
			return 2
		}
		if fs.NArg() == 0 {
			break
		}
		dirs = append(dirs, fs.Arg(0))
		rest = fs.Args()[1:]
	}
	if len(dirs) == 0 || (*node == "" && *grpcNS == "") {
		fmt.Fprint(stderr, "usage: meshctl translate DIR... --node NODE [--grpc-namespace NS]\n")
		return 2
	}
	objs, diags := config.Load(dirs...)
	if config.HasErrors(diags) {
		for _, d := range diags {
			if d.Severity == config.SeverityError {
				fmt.Fprintln(stderr, d.String())
			}
		}
		fmt.Fprintln(stderr, "meshctl: configuration has errors; nothing translated")
		return 1
	}
	store := config.NewStore()
	if err := store.Replace("meshctl", objs); err != nil {
		fmt.Fprintf(stderr, "meshctl: %v\n", err)
		return 1
	}
	proxy := translate.Proxy{Kind: translate.SharedEnvoy, Node: *node}
	if *grpcNS != "" {
		proxy = translate.Proxy{Kind: translate.ProxylessGRPC, Node: *node, Namespace: *grpcNS}
	}
	snap := store.Snapshot()
	nc := translate.Translate(snap, proxy)
	var extra []xds.TypedResources
	if proxy.Kind == translate.SharedEnvoy {
		var diags []config.Diagnostic
		extra, diags = xds.PreparedDataplane(dataplane.Options{})(snap)(proxy.Node)
		nc.Diagnostics = append(nc.Diagnostics, diags...)
	}
	out, err := nodeConfigYAML(nc, extra)
	if err != nil {
		fmt.Fprintf(stderr, "meshctl: %v\n", err)
		return 1
	}
	_, _ = stdout.Write(out)
	for _, d := range nc.Diagnostics {
		fmt.Fprintln(stderr, d.String())
	}
	if err := translate.Check(nc); err != nil {
		fmt.Fprintf(stderr, "meshctl: generated config fails its check: %v\n", err)
		return 1
	}
	return 0
}

// nodeConfigYAML renders nc (and a node agent's dataplane resources) as
// YAML through protojson.
func nodeConfigYAML(nc *translate.NodeConfig, extra []xds.TypedResources) ([]byte, error) {
	dump, err := xds.DumpNodeConfig(nc)
	if err != nil {
		return nil, err
	}
	doc := map[string]any{
		"proxy": map[string]string{
			"kind": xds.ProxyKindString(nc.Proxy.Kind), "node": nc.Proxy.Node, "namespace": nc.Proxy.Namespace,
		},
	}
	for k, v := range dump {
		doc[k] = v
	}
	if len(extra) > 0 {
		dp := map[string][]json.RawMessage{}
		for _, e := range extra {
			key := e.TypeURL[strings.LastIndex(e.TypeURL, ".")+1:]
			dp[key] = []json.RawMessage{}
			for _, m := range e.Items {
				b, err := protojson.Marshal(m)
				if err != nil {
					return nil, fmt.Errorf("render %s: %w", key, err)
				}
				dp[key] = append(dp[key], b)
			}
		}
		doc["dataplane"] = dp
	}
	j, err := json.Marshal(doc)
	if err != nil {
		return nil, fmt.Errorf("render config: %w", err)
	}
	y, err := yaml.JSONToYAML(j)
	if err != nil {
		return nil, fmt.Errorf("render config as yaml: %w", err)
	}
	return y, nil
}
